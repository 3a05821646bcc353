// The dashboard: `GET /` is one self-contained page (nothing fetched from elsewhere); the heatmap route gives the
// store's numbers per layer and expert; and headless Chromium (Debian's `chromium`) renders the page, whose
// heatmap cells carry exactly those numbers (the synthetic model's trust, activations and lift, written by the
// fixture), with the live panel filled from /metrics.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <regex>
#include <tuple>

#include "store/base/json.h"
#include "tests/api/api_test_util.h"
#include "tests/api/http_client.h"
#include "tests/util/run_cli.h"

namespace es {
namespace {

using testing::Fetch;
using testing::SharedStore;

const std::vector<std::string> kDomains = {"german", "python"};

// The expected value of a cell, or nullopt for a cell without data (the expert the synthetic model lacks).
std::optional<double> Expected(const std::string& metric, uint32_t l, uint32_t e, const std::string& domain) {
  if (l == testing::kAbsentLayer && e == testing::kAbsentExpert) return std::nullopt;
  if (metric == "activations") return static_cast<double>(testing::SyntheticActivations(l, e));
  if (metric == "trust") return testing::SyntheticTrust(l, e);
  return testing::SyntheticLift(l, e, domain);
}

TEST(DashboardTest, PageIsSelfContained) {
  auto server = testing::StartServer(SharedStore());
  ASSERT_TRUE(server);
  auto r = Fetch(server->port(), "GET", "/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->header("content-type"), "text/html; charset=utf-8");
  EXPECT_NE(r->body.find("<svg id=\"swapin\""), std::string::npos);
  // No script, style, font or image from another origin: the only absolute URL is the SVG namespace's name.
  std::string rest = r->body;
  const std::string ns = "http://www.w3.org/2000/svg";
  for (size_t p; (p = rest.find(ns)) != std::string::npos;) rest.erase(p, ns.size());
  EXPECT_EQ(rest.find("http://"), std::string::npos);
  EXPECT_EQ(rest.find("https://"), std::string::npos);
  EXPECT_EQ(rest.find("<link"), std::string::npos);
  EXPECT_EQ(rest.find(" src="), std::string::npos);
  auto post = Fetch(server->port(), "POST", "/", "{}");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 405);
}

TEST(DashboardTest, HeatmapHoldsTheStoresNumbers) {
  auto server = testing::StartServer(SharedStore());
  ASSERT_TRUE(server);
  auto r = Fetch(server->port(), "GET", "/v1/models/m/heatmap");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto doc = ParseJson(r->body);
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(*doc->Find("layers")->AsUint64(), testing::kSyntheticLayers);
  EXPECT_EQ(*doc->Find("experts")->AsUint64(), testing::kSyntheticExperts);
  std::vector<std::string> domains;
  for (const JsonValue& d : doc->Find("domains")->array()) domains.push_back(d.string_value());
  EXPECT_EQ(domains, kDomains);
  auto check = [&](const JsonValue& grid, const std::string& metric, const std::string& domain) {
    ASSERT_EQ(grid.array().size(), testing::kSyntheticLayers);
    for (uint32_t l = 0; l < testing::kSyntheticLayers; ++l) {
      ASSERT_EQ(grid.array()[l].array().size(), testing::kSyntheticExperts);
      for (uint32_t e = 0; e < testing::kSyntheticExperts; ++e) {
        const JsonValue& v = grid.array()[l].array()[e];
        const std::optional<double> want = Expected(metric, l, e, domain);
        if (!want) {
          EXPECT_TRUE(v.is_null()) << metric << " " << l << "/" << e;
        } else {
          EXPECT_DOUBLE_EQ(*v.AsDouble(), *want) << metric << " " << l << "/" << e;
        }
      }
    }
  };
  check(*doc->Find("activations"), "activations", "");
  check(*doc->Find("trust"), "trust", "");
  for (const std::string& d : kDomains) check(*doc->Find("lift")->Find(d), "lift", d);
  auto missing = Fetch(server->port(), "GET", "/v1/models/nope/heatmap");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
}

// Debian's chromium, or ES_CHROMIUM.
std::optional<std::string> FindChromium() {
  if (const char* env = std::getenv("ES_CHROMIUM"); env != nullptr && *env != '\0') return std::string(env);
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"}) {
    if (std::filesystem::exists(p)) return std::string(p);
  }
  return std::nullopt;
}

TEST(DashboardTest, ChromiumRendersTheHeatmapsWithTheStoresNumbers) {
  const std::optional<std::string> chromium = FindChromium();
  if (!chromium) {
    if (testing::InCi()) FAIL() << "chromium is not installed (tools/setup.sh installs it)";
    GTEST_SKIP() << "chromium is not installed (a failure under CI=true)";
  }
  auto server = testing::StartServer(SharedStore());
  ASSERT_TRUE(server);
  testing::TempDir profile;
  // The default domain is the first in the list; the page's script runs to its end within the virtual time budget
  // (fetches pause virtual time), then the DOM is printed.
  const std::string url = "http://127.0.0.1:" + std::to_string(server->port()) + "/?model=m";
  const std::string dom =
      testing::RunCommand("timeout 120 " + *chromium + " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
                 "--no-first-run --user-data-dir=" + profile.Sub("profile") +
                 " --virtual-time-budget=10000 --dump-dom '" + url + "' 2>/dev/null").out;
  ASSERT_NE(dom.find("data-ready=\"1\""), std::string::npos) << dom.substr(0, 2000);
  EXPECT_NE(dom.find("data-model=\"m\""), std::string::npos);
  // Every cell of the three heatmaps, with its value.
  const std::regex cell(R"re(data-metric="(\w+)" data-layer="(\d+)" data-expert="(\d+)" data-value="([^"]*)")re");
  std::map<std::string, size_t> cells;
  for (auto it = std::sregex_iterator(dom.begin(), dom.end(), cell); it != std::sregex_iterator(); ++it) {
    const std::string metric = (*it)[1];
    const auto l = static_cast<uint32_t>(std::stoul((*it)[2]));
    const auto e = static_cast<uint32_t>(std::stoul((*it)[3]));
    const std::string value = (*it)[4];
    const std::optional<double> want = Expected(metric, l, e, kDomains[0]);
    if (!want) {
      EXPECT_EQ(value, "") << metric << " " << l << "/" << e;
    } else {
      ASSERT_FALSE(value.empty()) << metric << " " << l << "/" << e;
      EXPECT_DOUBLE_EQ(std::stod(value), *want) << metric << " " << l << "/" << e;
    }
    ++cells[metric];
  }
  const size_t all = testing::kSyntheticLayers * testing::kSyntheticExperts;
  EXPECT_EQ(cells["activations"], all);
  EXPECT_EQ(cells["trust"], all);
  EXPECT_EQ(cells["lift"], all);
  // The model table lists the store's models, and the live panel read /metrics.
  EXPECT_NE(dom.find("<td>tiny</td>"), std::string::npos);
  EXPECT_EQ(dom.find("id=\"generated\">-<"), std::string::npos);
}

}  // namespace
}  // namespace es

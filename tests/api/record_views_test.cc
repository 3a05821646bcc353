// One JSON view per record: the HTTP routes and the CLI's --json print the same fields for a model, an expert in a
// list, an expert in full, a query row and the trust and usage records (the routes only add their envelope keys),
// over a store with trust records, profiles, usage totals and per-domain usage keys.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "store/base/json.h"
#include "store/metadata.h"
#include "tests/api/api_test_util.h"
#include "tests/api/http_client.h"
#include "tests/util/expert_model.h"
#include "tests/util/run_cli.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

constexpr char kModel[] = "m";
constexpr uint32_t kLayers = 2;
constexpr uint32_t kExperts = 8;

JsonValue Parse(const std::string& text) {
  auto v = ParseJson(text);
  EXPECT_TRUE(v.ok()) << text;
  return v.ok() ? std::move(v).value() : JsonValue();
}

void WriteCanonical(JsonWriter& w, const JsonValue& v, const std::set<std::string>& drop) {
  switch (v.type()) {
    case JsonValue::Type::kNull: w.Null(); break;
    case JsonValue::Type::kBool: w.Bool(v.bool_value()); break;
    case JsonValue::Type::kInt: w.Int(*v.AsInt64()); break;
    case JsonValue::Type::kUint: w.Uint(*v.AsUint64()); break;
    case JsonValue::Type::kDouble: w.Double(*v.AsDouble()); break;
    case JsonValue::Type::kString: w.String(v.string_value()); break;
    case JsonValue::Type::kArray:
      w.BeginArray();
      for (const JsonValue& x : v.array()) WriteCanonical(w, x, {});
      w.EndArray();
      break;
    case JsonValue::Type::kObject:
      w.BeginObject();
      for (const auto& [k, x] : v.object()) {
        if (drop.count(k) == 0) WriteCanonical(w.Key(k), x, {});
      }
      w.EndObject();
      break;
  }
}

// `v` as compact text, without the top-level keys in `drop` (a route's envelope).
std::string Canonical(const JsonValue& v, const std::set<std::string>& drop = {}) {
  JsonWriter w;
  WriteCanonical(w, v, drop);
  return w.Take();
}

class RecordViewsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = Store::Open(dir_.Sub("store"), StoreOptions{});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
    ASSERT_TRUE(testing::WriteTestModel(*store_, {.name = kModel, .layers = kLayers, .experts = kExperts}).ok());
    CatalogBatch batch;
    for (uint32_t l = 0; l < kLayers; ++l) {
      for (uint32_t e = 0; e < kExperts; ++e) {
        const std::string key = ExpertKey(kModel, l, e);
        if (e % 2 == 0) {  // half calibrated, half not: both shapes of a trust field
          TrustInfo t;
          t.trust = 0.1 * (e + 1);
          t.convergence_rate = 0.5;
          t.stability = 0.25;
          t.efficiency = 0.75;
          t.calibration_tokens = 1000 + e;
          t.updated_unix = 1700000000;
          batch.Put(Cf::kTrust, key, EncodeTrust(t));
        }
        if (e % 3 != 0) {  // some profiled
          ProfileInfo p;
          p.domains = {{"python", 10 + e, 0.25, 1.0 + e}, {"german", 5, 0.5, 0.5}};
          p.primary_domain = "python";
          p.top_coactivated = {{l, (e + 1) % kExperts, 9}};
          p.updated_unix = 1700000001;
          batch.Put(Cf::kProfiles, key, EncodeProfile(p));
        }
        UsageCounts u;
        u.activation_count = 100 + l * 10 + e;
        u.gate_mass = 0.5 * static_cast<double>(u.activation_count);
        u.success_count = e;
        u.last_used_unix_ms = 1700000000123;
        batch.Merge(Cf::kUsage, key, EncodeUsage(u));
        // A per-domain usage key, as `profile` records them: not an expert total.
        UsageCounts d;
        d.activation_count = 7;
        batch.Merge(Cf::kUsage, DomainUsageKey(kModel, l, e, "python"), EncodeUsage(d));
      }
    }
    ASSERT_TRUE(store_->catalog().Write(batch).ok());
    server_ = testing::StartServer(*store_);
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override {
    server_.reset();
    store_.reset();
  }

  JsonValue Http(const std::string& target) {
    auto r = testing::Fetch(server_->port(), "GET", target);
    EXPECT_TRUE(r.has_value());
    if (!r) return JsonValue();
    EXPECT_EQ(r->status, 200) << target << ": " << r->body;
    return Parse(r->body);
  }
  JsonValue Cli(const std::string& args) {
    testing::CliResult r = testing::RunCli(args + " --json --store " + dir_.Sub("store"));
    EXPECT_EQ(r.exit_code, 0) << args << ": " << r.out;
    return Parse(r.out);
  }

  testing::TempDir dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<testing::TestServer> server_;
};

TEST_F(RecordViewsTest, ModelIsOneShape) {
  JsonValue http = Http("/v1/models/m");
  JsonValue cli = Cli("models");
  ASSERT_EQ(cli.array().size(), 1u);
  EXPECT_EQ(Canonical(cli.array()[0]), Canonical(http, {"id", "object", "created", "owned_by"}));
  EXPECT_NE(cli.array()[0].Find("source_fingerprint"), nullptr);
}

TEST_F(RecordViewsTest, ExpertListRowsAreOneShapeAndSkipDomainUsageKeys) {
  for (const std::string layer : {"", "1"}) {
    SCOPED_TRACE("layer '" + layer + "'");
    JsonValue http = Http("/v1/models/m/experts" + (layer.empty() ? "" : "?layer=" + layer));
    JsonValue cli = Cli("experts --model m" + (layer.empty() ? "" : " --layer " + layer));
    ASSERT_NE(http.Find("data"), nullptr);
    EXPECT_EQ(Canonical(cli), Canonical(*http.Find("data")));
    ASSERT_EQ(cli.array().size(), layer.empty() ? kLayers * kExperts : kExperts);
    for (const JsonValue& row : cli.array()) {
      const uint64_t l = *row.Find("layer")->AsUint64(), e = *row.Find("expert")->AsUint64();
      EXPECT_EQ(*row.Find("activations")->AsUint64(), 100 + l * 10 + e) << "the domain key is not a total";
      EXPECT_EQ(row.Find("trust")->is_null(), e % 2 != 0);
      EXPECT_EQ(row.Find("checksum")->string_value().size(), 16u);
    }
  }
}

TEST_F(RecordViewsTest, ExpertInFullIsOneShape) {
  for (uint32_t e : {0u, 1u, 3u}) {  // calibrated and profiled, neither, and not profiled
    SCOPED_TRACE(e);
    JsonValue http = Http("/v1/models/m/experts/1/" + std::to_string(e));
    JsonValue cli = Cli("show --model m --layer 1 --expert " + std::to_string(e));
    EXPECT_EQ(Canonical(cli), Canonical(http, {"object", "blob"}));
    EXPECT_EQ(cli.Find("trust")->is_null(), e % 2 != 0);
    EXPECT_EQ(cli.Find("profile")->is_null(), e % 3 == 0);
  }
}

// The whole result, not only its rows: `query --json` is the HTTP query route's document.
TEST_F(RecordViewsTest, QueryRowsAreOneShape) {
  JsonValue http = Http("/v1/models/m/query?domain=python&top=6&order=lift,trust");
  JsonValue cli = Cli("query --model m --domain python --top 6 --order lift,trust");
  EXPECT_EQ(Canonical(cli), Canonical(http));
  // Without a domain, experts without a profile have a null domain in both.
  http = Http("/v1/models/m/query?order=activations&top=16");
  cli = Cli("query --model m --order activations --top 16");
  EXPECT_EQ(Canonical(cli), Canonical(http));
  bool saw_null = false;
  for (const JsonValue& row : cli.Find("data")->array()) saw_null |= row.Find("domain")->is_null();
  EXPECT_TRUE(saw_null);
  // The same limit on `top` for both.
  auto too_many = testing::Fetch(server_->port(), "GET", "/v1/models/m/query?top=100001");
  ASSERT_TRUE(too_many.has_value());
  EXPECT_EQ(too_many->status, 400);
  EXPECT_EQ(testing::RunCli("query --model m --top 100001 --store " + dir_.Sub("store")).exit_code, 2);
}

TEST_F(RecordViewsTest, TrustCommandIsTheTrustAndUsageRecords) {
  for (uint32_t e : {0u, 1u}) {
    SCOPED_TRACE(e);
    JsonValue expert = Http("/v1/models/m/experts/0/" + std::to_string(e));
    JsonValue trust = Cli("trust --model m --layer 0 --expert " + std::to_string(e));
    // The trust command is the expert view's trust, usage and activations, under the same names.
    JsonWriter want;
    want.BeginObject().Key("layer").Uint(0).Key("expert").Uint(e);
    for (const char* k : {"trust", "usage", "activations"}) WriteCanonical(want.Key(k), *expert.Find(k), {});
    want.EndObject();
    EXPECT_EQ(Canonical(trust), want.str());
  }
}

}  // namespace
}  // namespace es

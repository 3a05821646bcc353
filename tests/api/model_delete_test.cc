// DELETE /v1/models/{model} through the pure request handler: refused (403) unless the service allows writes; with
// writes, the model is gone in one commit and answered in OpenAI's shape; other methods are told GET and DELETE.
#include <gtest/gtest.h>

#include <string>

#include "api/routes.h"
#include "store/base/json.h"
#include "store/store.h"
#include "tests/util/expert_model.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

api::Reply Call(const api::ApiContext& ctx, const std::string& method, const std::string& target) {
  api::ApiRequest req;
  req.method = method;
  req.target = target;
  return api::HandleRequest(ctx, req);
}

TEST(ModelDeleteTest, OnlyWhereWritesAreAllowedAndThenAtomically) {
  testing::TempDir dir;
  auto store = Store::Open(dir.Sub("store"), StoreOptions{});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ASSERT_TRUE(testing::WriteTestModel(**store, {.name = "a", .layers = 2, .experts = 4}).ok());
  ASSERT_TRUE(testing::WriteTestModel(**store, {.name = "b", .layers = 2, .experts = 4}).ok());

  api::ApiContext read_only{store->get(), nullptr, nullptr, {}};
  api::Reply refused = Call(read_only, "DELETE", "/v1/models/a");
  EXPECT_EQ(refused.response.status, 403);
  EXPECT_NE(refused.response.body.find("permission_error"), std::string::npos) << refused.response.body;
  EXPECT_EQ(Call(read_only, "GET", "/v1/models/a").response.status, 200);

  api::ApiContext writable{store->get(), nullptr, nullptr, {}, /*allow_writes=*/true};
  api::Reply deleted = Call(writable, "DELETE", "/v1/models/a");
  ASSERT_EQ(deleted.response.status, 200) << deleted.response.body;
  auto doc = ParseJson(deleted.response.body);
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(doc->Find("id")->string_value(), "a");
  EXPECT_TRUE(doc->Find("deleted")->bool_value());
  EXPECT_EQ(Call(writable, "GET", "/v1/models/a").response.status, 404);
  EXPECT_EQ(Call(writable, "GET", "/v1/models/a/experts").response.status, 404);
  EXPECT_EQ(Call(writable, "DELETE", "/v1/models/a").response.status, 404);
  EXPECT_EQ(Call(writable, "GET", "/v1/models/b").response.status, 200);
  auto report = (*store)->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());

  api::Reply wrong = Call(writable, "PUT", "/v1/models/b");
  EXPECT_EQ(wrong.response.status, 405);
  bool allow = false;
  for (const auto& [name, value] : wrong.response.headers) allow |= name == "Allow" && value == "GET, DELETE";
  EXPECT_TRUE(allow);
}

}  // namespace
}  // namespace es

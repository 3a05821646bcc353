// `expertstore serve` and `expertstore fetch-expert` as processes: SIGTERM drains a stream in flight, exits 0
// and releases the store with the completion's usage recorded; fetch-expert copies an expert between two stores over HTTP, verified, with the
// documented model-record semantics (created incomplete, reused, completed by a later ingest of the same
// checkpoint), and refuses to mix checkpoints.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "api/client.h"
#include "ingest/ingest.h"
#include "store/base/aligned_buffer.h"
#include "store/base/checksum.h"
#include "store/base/json.h"
#include "store/metadata.h"
#include "tests/api/api_test_util.h"
#include "tests/api/http_client.h"
#include "tests/util/run_cli.h"

namespace es {
namespace {


using testing::CliResult;
using testing::RunCli;

// `expertstore serve --port 0 --json` as a child; its port is read from the JSON line it prints.
class ServeProcess {
 public:
  explicit ServeProcess(const std::string& store) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], STDOUT_FILENO);
      ::close(fds[0]);
      ::close(fds[1]);
      ::execl(testing::kCliPath, testing::kCliPath, "serve", "--store", store.c_str(), "--port", "0", "--json", "--quiet", "--drain-timeout-ms",
              "20000", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(fds[1]);
    // The read end stays open while the server runs: a server writing to a closed pipe would die of SIGPIPE.
    out_ = ::fdopen(fds[0], "r");
    char line[256] = {};
    if (out_ != nullptr && std::fgets(line, sizeof(line), out_) != nullptr) {
      auto doc = ParseJson(line);
      if (doc.ok() && doc->Find("port") != nullptr) port_ = static_cast<uint16_t>(*doc->Find("port")->AsUint64());
    }
  }
  ~ServeProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ != nullptr) std::fclose(out_);
  }
  uint16_t port() const { return port_; }
  // "running", or how the server ended: for failure messages.
  std::string State() {
    if (reaped_) return "reaped";
    int status = 0;
    ::usleep(100 * 1000);  // a server that is dying has time to finish
    if (::waitpid(pid_, &status, WNOHANG) != pid_) return "running";
    reaped_ = true;
    if (WIFEXITED(status)) return "exited with " + std::to_string(WEXITSTATUS(status));
    return WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status)) : "stopped";
  }
  void Signal(int sig) { ::kill(pid_, sig); }
  // The exit code, or -1 when it did not exit normally.
  int Wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  uint16_t port_ = 0;
  bool reaped_ = false;
};

TEST(ServeCliTest, SigtermDrainsTheStreamInFlightAndReleasesTheStore) {
  testing::TempDir dir;
  {
    auto store = Store::Open(dir.Sub("s"), StoreOptions{});
    ASSERT_TRUE(store.ok());
    IngestOptions o;
    o.name = "tiny";
    ASSERT_TRUE(IngestCheckpoint(**store, testing::kTinyCheckpoint, o).ok());
  }
  ServeProcess serve(dir.Sub("s"));
  ASSERT_NE(serve.port(), 0);
  // The store is held by the server: another writer is refused.
  EXPECT_TRUE(Store::Open(dir.Sub("s"), StoreOptions{}).status().IsBusy());
  auto c = testing::TestConnection::Connect(serve.port());
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->SendRequest("POST", "/v1/completions",
                             R"({"model":"tiny","prompt":"def main(","max_tokens":40,"temperature":0,"stream":true})"));
  auto head = c->ReadHead();
  ASSERT_TRUE(head) << "no response head; the server is " << serve.State();
  ASSERT_EQ(head->status, 200);
  auto first = c->ReadChunk();
  ASSERT_TRUE(first) << "no first chunk; the server is " << serve.State();
  serve.Signal(SIGTERM);
  std::string body = *first;
  while (auto chunk = c->ReadChunk()) body += *chunk;
  auto events = testing::SseData(body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  size_t texts = 0;
  for (const auto& e : events) texts += e.find("\"text\"") != std::string::npos;
  EXPECT_EQ(texts, 41u);  // every token, then the finish chunk
  EXPECT_EQ(serve.Wait(), 0);
  // Closed cleanly: the lock is free and everything verifies.
  auto store = Store::Open(dir.Sub("s"), StoreOptions{});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto report = (*store)->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());
  // The server recorded the completion's expert usage (as generate does): every routed token of layer 0 adds
  // top_k (4) activations, and the prompt plus 40 decoded tokens were routed.
  auto usage = LoadModelUsage((*store)->catalog(), "tiny");
  ASSERT_TRUE(usage.ok()) << usage.status().ToString();
  uint64_t layer0 = 0;
  for (const auto& [id, counts] : usage->totals) layer0 += id.first == 0 ? counts.activation_count : 0;
  EXPECT_GE(layer0, 40u * 4);
  EXPECT_EQ(layer0 % 4, 0u);
}

// Reads an expert's payload from a store, verified.
std::vector<std::byte> ReadExpert(Store& store, const std::string& model, uint32_t layer, uint32_t expert) {
  auto v = store.catalog().Get(Cf::kExperts, ExpertKey(model, layer, expert));
  if (!v.ok()) return {};
  ExpertInfo info = *DecodeExpert(*v);
  AlignedBuffer buf(info.extent.record_length);
  ExtentRead read{info.extent, buf.span(), Status(), {}};
  store.reader().ReadBatch({&read, 1});
  if (!read.status.ok()) return {};
  return {read.payload.begin(), read.payload.end()};
}

TEST(ServeCliTest, FetchExpertCopiesVerifiedExpertsBetweenStores) {
  auto server = testing::StartServer(testing::SharedStore());
  ASSERT_TRUE(server);
  testing::TempDir dir;
  const std::string from = "--from http://127.0.0.1:" + std::to_string(server->port());
  const std::string local = "--store " + dir.Sub("local");

  CliResult r = RunCli("fetch-expert " + from + " --model tiny --layer 2 --expert 9 --json " + local);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto doc = ParseJson(r.out);
  ASSERT_TRUE(doc.ok()) << r.out;
  EXPECT_TRUE(doc->Find("created_model")->bool_value());
  EXPECT_FALSE(doc->Find("unchanged")->bool_value());
  EXPECT_EQ(*doc->Find("bytes")->AsUint64(), 73728u);
  // Again: nothing to do. Another expert: the model record is reused.
  r = RunCli("fetch-expert " + from + " --model tiny --layer 2 --expert 9 --json " + local);
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_TRUE(ParseJson(r.out)->Find("unchanged")->bool_value());
  r = RunCli("fetch-expert " + from + " --model tiny --layer 5 --expert 0 --json " + local);
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_FALSE(ParseJson(r.out)->Find("created_model")->bool_value());
  // Under another name.
  r = RunCli("fetch-expert " + from + " --model m --layer 0 --expert 4 --as copy --json " + local);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  // Failures: an absent expert, an unknown model, nobody listening.
  EXPECT_NE(RunCli("fetch-expert " + from + " --model m --layer 1 --expert 7 " + local).exit_code, 0);
  EXPECT_NE(RunCli("fetch-expert " + from + " --model nope --layer 0 --expert 0 " + local).exit_code, 0);
  EXPECT_NE(RunCli("fetch-expert --from http://127.0.0.1:1 --model m --layer 0 --expert 0 " + local).exit_code, 0);

  {
    auto store = Store::Open(dir.Sub("local"), StoreOptions{});
    ASSERT_TRUE(store.ok());
    EXPECT_EQ(ReadExpert(**store, "tiny", 2, 9), ReadExpert(testing::SharedStore(), "tiny", 2, 9));
    EXPECT_EQ(ReadExpert(**store, "copy", 0, 4), ReadExpert(testing::SharedStore(), "m", 0, 4));
    auto models = (*store)->ListModels();
    ASSERT_TRUE(models.ok());
    ASSERT_EQ(models->size(), 2u);
    const ModelInfo& tiny = (*models)[1].name == "tiny" ? (*models)[1] : (*models)[0];
    EXPECT_EQ(tiny.num_experts, 2u);
    EXPECT_EQ(tiny.total_bytes, 2u * 73728);
    EXPECT_FALSE(tiny.complete);
    EXPECT_EQ(tiny.num_layers, 6u);
    auto report = (*store)->Verify();
    ASSERT_TRUE(report.ok());
    EXPECT_TRUE(report->ok());

    // A different checkpoint under the same name is refused.
    auto blob = api::FetchExpertBlob(*api::ParseHttpUrl("http://127.0.0.1:" + std::to_string(server->port())), "m", 0, 1);
    ASSERT_TRUE(blob.ok()) << blob.status().ToString();
    api::ImportOptions as_tiny;
    as_tiny.as_model = "tiny";
    EXPECT_TRUE(api::ImportExpert(**store, *blob, as_tiny).status().IsInvalidArgument());
    // Different bytes for an expert already present: refused unless replace.
    api::ExpertBlob changed = *blob;
    changed.model.name = "copy";
    changed.expert = 4;
    changed.payload[0] ^= std::byte{1};
    changed.checksum = Xxh3(changed.payload);
    EXPECT_TRUE(api::ImportExpert(**store, changed).status().IsInvalidArgument());
    api::ImportOptions replace;
    replace.replace = true;
    auto replaced = api::ImportExpert(**store, changed, replace);
    ASSERT_TRUE(replaced.ok()) << replaced.status().ToString();
    EXPECT_EQ(ReadExpert(**store, "copy", 0, 4), changed.payload);

    // Ingesting the same checkpoint later completes the fetched model (an interrupted-ingest resume).
    IngestOptions o;
    o.name = "tiny";
    auto ingested = IngestCheckpoint(**store, testing::kTinyCheckpoint, o);
    ASSERT_TRUE(ingested.ok()) << ingested.status().ToString();
    EXPECT_TRUE(ingested->resumed);
    auto after = (*store)->Verify("tiny");
    ASSERT_TRUE(after.ok());
    EXPECT_TRUE(after->ok());
    EXPECT_EQ(after->checked, 192u + 57 + 3);  // experts, dense tensors, assets
  }
}

}  // namespace
}  // namespace es

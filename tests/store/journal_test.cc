// The metadata journal: framing, exactly-once merging (live files, finished files, crashes between the steps
// of a merge), torn tails and byte flips, stale temporaries, and concurrent recorder processes (some killed)
// whose totals must come out exact.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "store/journal.h"
#include "store/store.h"
#include "tests/util/fault_fs.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

using testing::FaultInjectionFileSystem;
using testing::FaultOp;
using testing::TempDir;

std::unique_ptr<Store> Open(const std::string& path, bool read_only) {
  StoreOptions o;
  o.read_only = read_only;
  auto s = Store::Open(path, o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

// One activation (gate mass 0.5) for each of experts 0..keys-1 of model "m", layer 0.
CatalogBatch Increments(int keys) {
  CatalogBatch b;
  for (int k = 0; k < keys; ++k) {
    UsageCounts u;
    u.activation_count = 1;
    u.gate_mass = 0.5;
    u.coactivations = {{1, static_cast<uint32_t>(k), 1}};
    b.Merge(Cf::kUsage, ExpertKey("m", 0, static_cast<uint32_t>(k)), EncodeUsage(u));
  }
  return b;
}

uint64_t Activations(Store& store, uint32_t expert) {
  auto v = store.catalog().Get(Cf::kUsage, ExpertKey("m", 0, expert));
  if (v.status().IsNotFound()) return 0;
  EXPECT_TRUE(v.ok()) << v.status().ToString();
  auto u = DecodeUsage(*v);
  EXPECT_TRUE(u.ok());
  // Every counter moves together: gate mass and the co-activation agree with the count.
  EXPECT_DOUBLE_EQ(u->gate_mass, 0.5 * static_cast<double>(u->activation_count));
  EXPECT_EQ(u->coactivations.size(), 1u);
  if (!u->coactivations.empty()) {
    EXPECT_EQ(u->coactivations[0].count, u->activation_count);
  }
  return u->activation_count;
}

std::vector<std::string> JournalFiles(const std::string& store) {
  std::vector<std::string> out;
  std::string dir = store + "/journal";
  if (!std::filesystem::exists(dir)) return out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

size_t Markers(Store& store) {
  size_t n = 0;
  EXPECT_TRUE(store.catalog().Scan(Cf::kMeta, kJournalMarkerPrefix, [&](std::string_view, std::string_view) {
    ++n;
    return true;
  }).ok());
  return n;
}

TEST(Journal, PayloadRoundTripAndWhatItAccepts) {
  CatalogBatch b = Increments(3);
  b.Put(Cf::kTrust, ExpertKey("m", 0, 1), EncodeTrust(TrustInfo{.trust = 0.5}));
  ProfileInfo profile;
  profile.primary_domain = "c";
  b.Put(Cf::kProfiles, ExpertKey("m", 0, 2), EncodeProfile(profile));
  auto payload = EncodeJournalPayload(b);
  ASSERT_TRUE(payload.ok());
  auto back = DecodeJournalPayload(*payload);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  std::vector<std::tuple<int, int, std::string, std::string>> want, got;
  b.ForEach([&](CatalogBatch::OpKind k, Cf cf, std::string_view key, std::string_view v) {
    want.emplace_back(static_cast<int>(k), static_cast<int>(cf), std::string(key), std::string(v));
  });
  back->ForEach([&](CatalogBatch::OpKind k, Cf cf, std::string_view key, std::string_view v) {
    got.emplace_back(static_cast<int>(k), static_cast<int>(cf), std::string(key), std::string(v));
  });
  EXPECT_EQ(got, want);
  // Only usage merges and trust/profile puts travel through the journal.
  CatalogBatch del;
  del.Delete(Cf::kUsage, "k");
  EXPECT_TRUE(EncodeJournalPayload(del).status().IsInvalidArgument());
  CatalogBatch put;
  put.Put(Cf::kExperts, "k", "v");
  EXPECT_TRUE(EncodeJournalPayload(put).status().IsInvalidArgument());
  // Every truncation of a payload and junk are Corruption, never a partial batch.
  for (size_t n = 0; n < payload->size(); ++n) {
    EXPECT_TRUE(DecodeJournalPayload(std::string_view(*payload).substr(0, n)).status().IsCorruption()) << n;
  }
  EXPECT_TRUE(DecodeJournalPayload(*payload + "x").status().IsCorruption());
}

TEST(Journal, WriterMergesALiveFileIncrementallyAndAFinishedOneOnce) {
  TempDir dir;
  std::string path = dir.Sub("s");
  auto writer = Open(path, false);
  ASSERT_TRUE(writer);
  auto reader = Open(path, true);
  ASSERT_TRUE(reader);
  EXPECT_TRUE(reader->journaling());
  EXPECT_FALSE(writer->journaling());
  EXPECT_TRUE(reader->MergeJournals().status().IsNotSupported());
  // Metadata a reader may not journal.
  CatalogBatch bad;
  bad.Put(Cf::kModels, "m", "x");
  EXPECT_TRUE(reader->WriteMetadata(bad).IsInvalidArgument());

  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader->WriteMetadata(Increments(4)).ok());
  auto m1 = writer->MergeJournals();
  ASSERT_TRUE(m1.ok()) << m1.status().ToString();
  EXPECT_EQ(m1->records, 3u);
  EXPECT_EQ(m1->files_removed, 0u);  // its owner is alive
  EXPECT_EQ(Activations(*writer, 2), 3u);
  // Merging again applies nothing new.
  auto m2 = writer->MergeJournals();
  ASSERT_TRUE(m2.ok());
  EXPECT_EQ(m2->records, 0u);
  EXPECT_EQ(Activations(*writer, 2), 3u);
  ASSERT_TRUE(reader->WriteMetadata(Increments(4)).ok());
  reader.reset();  // the owner goes away: the file is finished
  auto m3 = writer->MergeJournals();
  ASSERT_TRUE(m3.ok());
  EXPECT_EQ(m3->records, 1u);
  EXPECT_EQ(m3->files_removed, 1u);
  EXPECT_EQ(m3->torn_tails, 0u);
  for (uint32_t k = 0; k < 4; ++k) EXPECT_EQ(Activations(*writer, k), 4u);
  EXPECT_TRUE(JournalFiles(path).empty());
  EXPECT_EQ(Markers(*writer), 0u);
}

TEST(Journal, WriterMergesOnOpen) {
  TempDir dir;
  std::string path = dir.Sub("s");
  ASSERT_TRUE(Open(path, false));  // create
  {
    auto reader = Open(path, true);
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(reader->WriteMetadata(Increments(2)).ok());
  }
  auto writer = Open(path, false);
  ASSERT_TRUE(writer);
  EXPECT_EQ(writer->open_merge_stats().records, 5u);
  EXPECT_EQ(Activations(*writer, 1), 5u);
  EXPECT_TRUE(JournalFiles(path).empty());
}

// A crash between the steps of a merge: after the batch with the marker committed but before the file was
// deleted, and after the deletion but before the marker was removed. Neither repeats nor loses a record.
TEST(Journal, CrashesBetweenMergeStepsNeitherRepeatNorLose) {
  TempDir dir;
  std::string path = dir.Sub("s");
  ASSERT_TRUE(Open(path, false));
  {
    auto reader = Open(path, true);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader->WriteMetadata(Increments(1)).ok());
  }
  auto files = JournalFiles(path);
  ASSERT_EQ(files.size(), 1u);
  std::string name = std::filesystem::path(files[0]).filename().string();
  uint64_t size = std::filesystem::file_size(files[0]);
  std::string copy = dir.Sub("copy.jnl");
  std::filesystem::copy_file(files[0], copy);
  // Crash after the commit, before the delete: put the file back beside its marker.
  {
    auto writer = Open(path, false);
    EXPECT_EQ(Activations(*writer, 0), 3u);
    CatalogBatch marker;
    marker.Put(Cf::kMeta, std::string(kJournalMarkerPrefix) + name, std::to_string(size));
    ASSERT_TRUE(writer->catalog().Write(marker).ok());
  }
  std::filesystem::copy_file(copy, files[0]);
  {
    auto writer = Open(path, false);
    EXPECT_EQ(writer->open_merge_stats().records, 0u);
    EXPECT_EQ(writer->open_merge_stats().files_removed, 1u);
    EXPECT_EQ(Activations(*writer, 0), 3u);
    EXPECT_TRUE(JournalFiles(path).empty());
    // Crash after the delete, before the marker's removal: an orphan marker goes on the next merge.
    CatalogBatch marker;
    marker.Put(Cf::kMeta, std::string(kJournalMarkerPrefix) + name, std::to_string(size));
    ASSERT_TRUE(writer->catalog().Write(marker).ok());
    ASSERT_EQ(Markers(*writer), 1u);
    ASSERT_TRUE(writer->MergeJournals().ok());
    EXPECT_EQ(Markers(*writer), 0u);
    EXPECT_EQ(Activations(*writer, 0), 3u);
  }
  // A marker after the first record, as a merge that committed one record and crashed leaves it: only the
  // records after it are applied. (The marker is written while the file is out of sight, else the writer's
  // open would consume the file first.)
  const uint64_t frame = (size - kJournalHeaderSize) / 3;
  {
    auto writer = Open(path, false);
    CatalogBatch marker;
    marker.Put(Cf::kMeta, std::string(kJournalMarkerPrefix) + name, std::to_string(kJournalHeaderSize + frame));
    ASSERT_TRUE(writer->catalog().Write(marker).ok());
    std::filesystem::copy_file(copy, files[0]);
    auto merged = writer->MergeJournals();
    ASSERT_TRUE(merged.ok());
    EXPECT_EQ(merged->records, 2u);
    EXPECT_EQ(merged->files_removed, 1u);
    EXPECT_EQ(Activations(*writer, 0), 5u);
    EXPECT_EQ(Markers(*writer), 0u);
  }
}

// A finished file whose last append was torn (cut anywhere inside its last record) gives up exactly that
// record; a byte flipped in a middle record ends the file there (nothing valid may follow a bad frame).
TEST(Journal, TornTailsAndFlippedBytes) {
  TempDir dir;
  std::string path = dir.Sub("s");
  ASSERT_TRUE(Open(path, false));
  {
    auto reader = Open(path, true);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(reader->WriteMetadata(Increments(1)).ok());
  }
  auto files = JournalFiles(path);
  ASSERT_EQ(files.size(), 1u);
  std::string copy = dir.Sub("copy.jnl");
  std::filesystem::copy_file(files[0], copy);
  const uint64_t size = std::filesystem::file_size(copy);
  const uint64_t frame = (size - kJournalHeaderSize) / 4;
  uint64_t expected = 0;
  for (uint64_t cut : {size - 1, size - frame + 1, size - frame + kJournalFrameHeaderSize, size - frame + 3}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    std::filesystem::copy_file(copy, files[0], std::filesystem::copy_options::overwrite_existing);
    std::filesystem::resize_file(files[0], cut);
    auto writer = Open(path, false);
    ASSERT_TRUE(writer);
    expected += 3;
    EXPECT_EQ(writer->open_merge_stats().records, 3u);
    EXPECT_EQ(writer->open_merge_stats().torn_tails, 1u);
    EXPECT_EQ(Activations(*writer, 0), expected);
    EXPECT_TRUE(JournalFiles(path).empty());
  }
  // Flip a byte of the second record's payload: only the first survives.
  std::filesystem::copy_file(copy, files[0], std::filesystem::copy_options::overwrite_existing);
  {
    std::fstream f(files[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(kJournalHeaderSize + frame + kJournalFrameHeaderSize + 5));
    char c = 0;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(kJournalHeaderSize + frame + kJournalFrameHeaderSize + 5));
    c ^= 0x10;
    f.write(&c, 1);
  }
  auto writer = Open(path, false);
  EXPECT_EQ(writer->open_merge_stats().records, 1u);
  EXPECT_EQ(Activations(*writer, 0), expected + 1);
  // A file with a damaged header is left alone and reported.
  std::ofstream(path + "/journal/junk.jnl") << "not a journal";
  auto merged = writer->MergeJournals();
  ASSERT_TRUE(merged.ok());
  EXPECT_EQ(merged->damaged.size(), 1u);
  EXPECT_TRUE(std::filesystem::exists(path + "/journal/junk.jnl"));
}

TEST(Journal, StaleTemporaryFilesAreRemoved) {
  TempDir dir;
  std::string path = dir.Sub("s");
  auto writer = Open(path, false);
  std::filesystem::create_directories(path + "/journal");
  std::ofstream(path + "/journal/dead" + std::string(kJournalTmpSuffix)) << "x";
  auto merged = writer->MergeJournals();
  ASSERT_TRUE(merged.ok());
  EXPECT_EQ(merged->stale_tmp_removed, 1u);
  EXPECT_TRUE(JournalFiles(path).empty());
}

// A merger that removed a recorder's temporary file between its creation and its lock (the open after the lock
// then finds no file) costs the recorder a fresh name, not its journal; only a merger that keeps doing so fails it.
TEST(Journal, CreatorRetriesATemporaryFileAMergerRemoved) {
  TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  fs->AddRule({FaultOp::kOpen, std::string(kJournalTmpSuffix), ENOENT, false, /*skip=*/0, /*times=*/2});
  std::filesystem::create_directories(dir.Sub("a"));
  std::filesystem::create_directories(dir.Sub("b"));
  auto w = JournalWriter::Create(fs, dir.Sub("a") + "/journal");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  // One journal published. (The injected failures leave their unlocked temporary files behind, which a merger
  // removes as abandoned; in the real race the merger had removed them already.)
  size_t published = 0;
  for (const auto& f : JournalFiles(dir.Sub("a"))) published += f.ends_with(kJournalSuffix);
  EXPECT_EQ(published, 1u);

  fs->AddRule({FaultOp::kOpen, std::string(kJournalTmpSuffix), ENOENT, false, /*skip=*/0, /*times=*/100});
  auto failed = JournalWriter::Create(fs, dir.Sub("b") + "/journal");
  ASSERT_FALSE(failed.ok());
  EXPECT_TRUE(failed.status().IsNotFound()) << failed.status().ToString();
  EXPECT_NE(failed.status().message().find("a merger kept removing it"), std::string::npos);
}

struct Child {
  pid_t pid = -1;
  int out = -1;
};

Child Spawn(const std::string& store, int batches, int keys) {
  int fds[2];
  if (::pipe(fds) != 0) return {};
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    std::string b = std::to_string(batches), k = std::to_string(keys);
    ::execl(ES_USAGE_CHILD, ES_USAGE_CHILD, store.c_str(), b.c_str(), k.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

// Reads a child's output to the end (it exits or was killed) and returns it.
std::string Drain(const Child& c) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(c.out, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(c.out);
  return out;
}

int Wait(const Child& c) {
  int status = 0;
  ::waitpid(c.pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

// Several recorder processes at once, racing for the writer lock: one becomes the writer, the others journal.
// Then with this process holding the writer (merging every few milliseconds) while they all journal. Totals
// are exact either way.
TEST(Journal, ConcurrentRecorderProcessesAreExact) {
  constexpr int kChildren = 4;
  constexpr int kBatches = 60;
  constexpr int kKeys = 5;
  for (bool parent_writes : {false, true}) {
    SCOPED_TRACE(parent_writes ? "parent holds the writer" : "children race for the writer");
    TempDir dir;
    std::string path = dir.Sub("s");
    ASSERT_TRUE(Open(path, false));
    std::unique_ptr<Store> writer;
    if (parent_writes) {
      writer = Open(path, false);
      ASSERT_TRUE(writer->StartJournalMerging(std::chrono::milliseconds(5)).ok());
    }
    std::vector<Child> children;
    for (int i = 0; i < kChildren; ++i) children.push_back(Spawn(path, kBatches, kKeys));
    size_t writers = 0;
    for (const Child& c : children) {
      std::string out = Drain(c);
      EXPECT_EQ(Wait(c), 0) << out;
      EXPECT_EQ(Count(out, "ACK "), static_cast<size_t>(kBatches));
      writers += Count(out, "MODE writer");
    }
    EXPECT_LE(writers, 1u);
    if (parent_writes) {
      EXPECT_EQ(writers, 0u);
      ASSERT_TRUE(writer->journal_merge_status().ok()) << writer->journal_merge_status().ToString();
      ASSERT_TRUE(writer->MergeJournals().ok());
    } else {
      writer = Open(path, false);  // merges what is left on open
    }
    for (uint32_t k = 0; k < kKeys; ++k) EXPECT_EQ(Activations(*writer, k), static_cast<uint64_t>(kChildren * kBatches));
    EXPECT_TRUE(JournalFiles(path).empty());
    EXPECT_EQ(Markers(*writer), 0u);
  }
}

// Journaling recorders killed mid-stream: every acknowledged batch is counted, at most the one in flight besides,
// and never a part of one.
TEST(Journal, KilledRecordersLoseOnlyWhatWasNotAcknowledged) {
  constexpr int kRounds = 6;
  constexpr int kKeys = 3;
  TempDir dir;
  std::string path = dir.Sub("s");
  auto writer = Open(path, false);
  ASSERT_TRUE(writer->StartJournalMerging(std::chrono::milliseconds(3)).ok());
  uint64_t acked = 0, in_flight = 0;
  for (int round = 0; round < kRounds; ++round) {
    Child c = Spawn(path, 1000000, kKeys);
    // Let it append for a while, then kill it.
    std::string out;
    char buf[4096];
    while (Count(out, "ACK ") < static_cast<size_t>(5 + round * 7)) {
      ssize_t n = ::read(c.out, buf, sizeof(buf));
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    ::kill(c.pid, SIGKILL);
    out += Drain(c);
    Wait(c);
    acked += Count(out, "ACK ");
    ++in_flight;
  }
  ASSERT_TRUE(writer->MergeJournals().ok());
  for (uint32_t k = 0; k < kKeys; ++k) {
    uint64_t n = Activations(*writer, k);
    EXPECT_GE(n, acked);
    EXPECT_LE(n, acked + in_flight);
  }
  EXPECT_TRUE(JournalFiles(path).empty());
}

}  // namespace
}  // namespace es

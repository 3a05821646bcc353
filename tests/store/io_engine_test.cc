// I/O engines: full reads under splitting and queue limits, per-request status, short reads, EINTR and EIO
// (injected), alignment rules, registered buffers. Runs under whichever engine EXPERTSTORE_IO_ENGINE names,
// and also exercises both engines explicitly.
#include "store/io_engine.h"

#include <errno.h>
#include <gtest/gtest.h>

#include <cstring>
#include <atomic>
#include <random>
#include <thread>

#include "store/base/aligned_buffer.h"
#include "tests/util/fault_fs.h"
#include "tests/util/temp_dir.h"

namespace es {
namespace {

using testing::FaultInjectionFileSystem;
using testing::FaultOp;
using testing::FaultRule;
using testing::TempDir;

constexpr size_t kFileSize = 8u << 20;

class IoEngineTest : public ::testing::TestWithParam<IoEngineKind> {
 protected:
  void SetUp() override {
    if (GetParam() == IoEngineKind::kUring && CreateUringEngine({}).status().IsNotSupported()) {
      GTEST_SKIP() << "io_uring is not available on this machine";
    }
    path_ = dir_.Sub("data");
    content_.resize(kFileSize);
    std::mt19937_64 rng(7);
    for (size_t i = 0; i < kFileSize; i += 8) {
      uint64_t v = rng();
      std::memcpy(content_.data() + i, &v, 8);
    }
    auto f = DefaultFileSystem()->Open(path_, OpenOptions{.write = true, .create = true});
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE((*f)->Write(0, content_).ok());
    ASSERT_TRUE((*f)->Sync().ok());
  }

  std::unique_ptr<IoEngine> Engine(IoEngineOptions options = {}) {
    auto e = CreateIoEngine(GetParam(), options);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return std::move(e).value();
  }

  bool Same(std::span<const std::byte> got, uint64_t offset) {
    return std::memcmp(got.data(), content_.data() + offset, got.size()) == 0;
  }

  TempDir dir_;
  std::string path_;
  std::vector<std::byte> content_;
};

TEST_P(IoEngineTest, ReadsManyRangesExactly) {
  IoEngineOptions options;
  options.queue_depth = 4;
  options.max_request_bytes = 64 * 1024;  // force splitting
  auto engine = Engine(options);
  auto file = DefaultFileSystem()->Open(path_, OpenOptions{.direct = true});
  ASSERT_TRUE(file.ok());
  std::mt19937 rng(3);
  std::vector<AlignedBuffer> bufs;
  std::vector<IoRead> reads;
  for (int i = 0; i < 40; ++i) {
    uint64_t blocks = kFileSize / 4096;
    uint64_t start = rng() % blocks;
    uint64_t len = 1 + rng() % std::min<uint64_t>(blocks - start, 300);
    bufs.emplace_back(len * 4096);
    reads.push_back(IoRead{file->get(), start * 4096, bufs.back().span(), Status::Ok()});
  }
  std::vector<int> completions(reads.size(), 0);
  engine->ReadBatch(reads, [&](size_t i) { completions[i]++; });
  for (size_t i = 0; i < reads.size(); ++i) {
    ASSERT_TRUE(reads[i].status.ok()) << reads[i].status.ToString();
    EXPECT_EQ(completions[i], 1);
    EXPECT_TRUE(Same(reads[i].dst, reads[i].offset)) << "read " << i;
  }
}

TEST_P(IoEngineTest, PerRequestStatus) {
  auto engine = Engine();
  auto file = DefaultFileSystem()->Open(path_, OpenOptions{.direct = true});
  ASSERT_TRUE(file.ok());
  AlignedBuffer good(8192), past_end(8192), unaligned(8192);
  std::vector<IoRead> reads = {
      {file->get(), 4096, good.span(), Status::Ok()},
      {file->get(), kFileSize - 4096, past_end.span(), Status::Ok()},  // runs off the end
      {file->get(), 100, unaligned.span(), Status::Ok()},
  };
  engine->ReadBatch(reads, nullptr);
  EXPECT_TRUE(reads[0].status.ok());
  EXPECT_TRUE(Same(reads[0].dst, 4096));
  EXPECT_TRUE(reads[1].status.IsCorruption()) << reads[1].status.ToString();
  if ((*file)->direct()) {
    EXPECT_TRUE(reads[2].status.IsInvalidArgument()) << reads[2].status.ToString();
  }
}

TEST_P(IoEngineTest, ShortReadsAreResumed) {
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  // Every read and completion comes back short a number of times; data must still be exact.
  fs->AddRule({FaultOp::kRead, "data", 0, /*short_io=*/true, 0, 50});
  fs->AddRule({FaultOp::kAsyncRead, "data", 0, /*short_io=*/true, 0, 50});
  auto file = fs->Open(path_, OpenOptions{.direct = true});
  ASSERT_TRUE(file.ok());
  auto engine = Engine();
  AlignedBuffer buf(1 << 20);
  std::vector<IoRead> reads = {{file->get(), 1 << 20, buf.span(), Status::Ok()}};
  engine->ReadBatch(reads, nullptr);
  ASSERT_TRUE(reads[0].status.ok()) << reads[0].status.ToString();
  EXPECT_TRUE(Same(buf.span(), 1 << 20));
  EXPECT_GT(fs->fired(), 0);
}

TEST_P(IoEngineTest, EintrIsRetried) {
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  fs->AddRule({FaultOp::kAsyncRead, "data", EINTR, false, 0, 5});
  auto file = fs->Open(path_, OpenOptions{.direct = true});
  ASSERT_TRUE(file.ok());
  auto engine = Engine();
  AlignedBuffer buf(256 * 1024);
  std::vector<IoRead> reads = {{file->get(), 0, buf.span(), Status::Ok()}};
  engine->ReadBatch(reads, nullptr);
  ASSERT_TRUE(reads[0].status.ok()) << reads[0].status.ToString();
  EXPECT_TRUE(Same(buf.span(), 0));
}

TEST_P(IoEngineTest, EioFailsOnlyThatRequest) {
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  fs->AddRule({FaultOp::kRead, "data", EIO, false, 0, 1});
  fs->AddRule({FaultOp::kAsyncRead, "data", EIO, false, 0, 1});
  auto file = fs->Open(path_, OpenOptions{.direct = true});
  ASSERT_TRUE(file.ok());
  IoEngineOptions options;
  options.queue_depth = 1;  // deterministic order: the first piece submitted is the one that fails
  auto engine = Engine(options);
  AlignedBuffer a(4096), b(4096);
  std::vector<IoRead> reads = {{file->get(), 0, a.span(), Status::Ok()}, {file->get(), 4096, b.span(), Status::Ok()}};
  engine->ReadBatch(reads, nullptr);
  EXPECT_TRUE(reads[0].status.IsIOError()) << reads[0].status.ToString();
  ASSERT_TRUE(reads[1].status.ok()) << reads[1].status.ToString();
  EXPECT_TRUE(Same(b.span(), 4096));
}

TEST_P(IoEngineTest, RegisteredBuffers) {
  auto engine = Engine();
  AlignedBuffer arena(1 << 20);
  std::span<std::byte> region = arena.span();
  Status s = engine->AddBuffers({&region, 1}).status();
  if (s.IsNotSupported()) GTEST_SKIP() << "engine without registered buffers: " << engine->name();
  // ResourceExhausted (limits) is allowed: reads must work either way.
  EXPECT_TRUE(s.ok() || s.IsResourceExhausted()) << s.ToString();
  auto file = DefaultFileSystem()->Open(path_, OpenOptions{.direct = true});
  ASSERT_TRUE(file.ok());
  std::vector<IoRead> reads = {{file->get(), 0, region.subspan(0, 512 * 1024), Status::Ok()},
                               {file->get(), 2 << 20, region.subspan(512 * 1024, 512 * 1024), Status::Ok()}};
  engine->ReadBatch(reads, nullptr);
  ASSERT_TRUE(reads[0].status.ok()) << reads[0].status.ToString();
  ASSERT_TRUE(reads[1].status.ok()) << reads[1].status.ToString();
  EXPECT_TRUE(Same(reads[0].dst, 0));
  EXPECT_TRUE(Same(reads[1].dst, 2 << 20));
}

// Registrations add up: a second owner's buffers join the first's, and removing one keeps the other's.
TEST_P(IoEngineTest, RegistrationsOfSeveralOwnersAddUp) {
  auto engine = Engine();
  AlignedBuffer a(1 << 20), b(1 << 20);
  std::span<std::byte> ra = a.span(), rb = b.span();
  auto first = engine->AddBuffers({&ra, 1});
  if (first.status().IsNotSupported()) GTEST_SKIP() << "engine without registered buffers: " << engine->name();
  if (first.status().IsResourceExhausted()) GTEST_SKIP() << "the kernel refuses registration here";
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(engine->registered_buffers(), 1u);
  auto second = engine->AddBuffers({&rb, 1});
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(engine->registered_buffers(), 2u);  // not replaced
  engine->RemoveBuffers(*first);
  EXPECT_EQ(engine->registered_buffers(), 1u);
  // Reads land in the remaining owner's buffer as before.
  auto file = DefaultFileSystem()->Open(path_, OpenOptions{.direct = true});
  ASSERT_TRUE(file.ok());
  std::vector<IoRead> reads = {{file->get(), 0, rb.subspan(0, 512 * 1024), Status::Ok()}};
  engine->ReadBatch(reads, nullptr);
  ASSERT_TRUE(reads[0].status.ok()) << reads[0].status.ToString();
  EXPECT_TRUE(Same(reads[0].dst, 0));
  engine->RemoveBuffers(*second);
  EXPECT_EQ(engine->registered_buffers(), 0u);
}

TEST_P(IoEngineTest, ConcurrentBatches) {
  auto engine = Engine();
  auto file = DefaultFileSystem()->Open(path_, OpenOptions{.direct = true});
  ASSERT_TRUE(file.ok());
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        AlignedBuffer buf(64 * 1024);
        uint64_t off = static_cast<uint64_t>((t * 20 + round) % 100) * 64 * 1024;
        std::vector<IoRead> reads = {{file->get(), off, buf.span(), Status::Ok()}};
        engine->ReadBatch(reads, nullptr);
        if (!reads[0].status.ok() || !Same(buf.span(), off)) bad++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Engines, IoEngineTest,
                         ::testing::Values(IoEngineKind::kAuto, IoEngineKind::kPread, IoEngineKind::kUring),
                         [](const auto& info) {
                           switch (info.param) {
                             case IoEngineKind::kAuto: return std::string("FromEnvironment");
                             case IoEngineKind::kPread: return std::string("Pread");
                             case IoEngineKind::kUring: return std::string("Uring");
                           }
                           return std::string("Unknown");
                         });

TEST(IoEngine, ParseKind) {
  EXPECT_EQ(*ParseIoEngineKind("uring"), IoEngineKind::kUring);
  EXPECT_EQ(*ParseIoEngineKind("pread"), IoEngineKind::kPread);
  EXPECT_TRUE(ParseIoEngineKind("mmap").status().IsInvalidArgument());
}

TEST(IoEngine, RejectsUnalignedSplitSize) {
  IoEngineOptions options;
  options.max_request_bytes = 1000;
  EXPECT_TRUE(CreateIoEngine(IoEngineKind::kPread, options).status().IsInvalidArgument());
}

}  // namespace
}  // namespace es

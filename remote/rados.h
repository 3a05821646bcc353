// A connection to a Ceph cluster and one of its pools, over librados's C API: whole-object writes and reads,
// xattrs, and batches of asynchronous reads with many in flight. Configuration the standard way: a ceph.conf
// (CephOptions::conf, else $CEPH_CONF, else librados's search path), a client id and a keyring (cephx), and
// $CEPH_ARGS. Every operation is bounded by CephOptions::timeout_seconds (librados's mon and osd op timeouts), so an
// unreachable monitor or a stopped OSD is an error, not a hang. librados's negative errno values become Statuses:
// -ENOENT NotFound, a timeout IOError saying so, the rest IOError with the errno's text. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "store/base/status.h"

namespace es::remote {

struct CephOptions {
  std::string conf;             // a ceph.conf; empty: $CEPH_CONF or librados's default search
  std::string id = "admin";     // the client id (client.<id>)
  std::string keyring;          // empty: what the configuration names
  uint32_t timeout_seconds = 30;
};

// rados://POOL[/PREFIX]: a pool and an object-name prefix (empty, or ending in '/').
struct RadosLocation {
  std::string pool;
  std::string prefix;
  std::string ToString() const;
};
// InvalidArgument for anything else.
Result<RadosLocation> ParseRadosUrl(std::string_view url);

class RadosPool {
 public:
  // Connects (IOError naming the cluster's configuration when it cannot) and opens `pool` (NotFound when the
  // cluster has no such pool).
  static Result<std::unique_ptr<RadosPool>> Connect(const CephOptions& options, const std::string& pool);
  ~RadosPool();
  RadosPool(const RadosPool&) = delete;
  RadosPool& operator=(const RadosPool&) = delete;

  const std::string& pool() const { return pool_; }

  // The object's size; NotFound when it does not exist.
  Result<uint64_t> Size(const std::string& name);
  Status WriteFull(const std::string& name, std::span<const std::byte> data);
  // The whole object (at most `max_bytes`: larger is Corruption).
  Result<std::string> ReadAll(const std::string& name, uint64_t max_bytes);
  // An xattr's value; NotFound when the object or the attribute is missing.
  Result<std::string> GetXattr(const std::string& name, const std::string& key);
  Status SetXattr(const std::string& name, const std::string& key, std::string_view value);
  Status Remove(const std::string& name);

  // Reads each object's first buffer.size() bytes into its buffer, up to `in_flight` at once (a new read starts as
  // the oldest completes); each gets its own status (a shorter object is Corruption naming it).
  struct Read {
    std::string name;
    std::span<std::byte> buffer;
    Status status;
  };
  // `on_done(i)`, when set, is called as read i completes, in order.
  void ReadBatch(std::span<Read> reads, size_t in_flight = 32, const std::function<void(size_t)>& on_done = {});
  // Writes each object whole, up to `in_flight` at once; each gets its own status.
  struct Write {
    std::string name;
    std::span<const std::byte> data;
    Status status;
  };
  void WriteBatch(std::span<Write> writes, size_t in_flight = 16);

 private:
  struct Impl;
  explicit RadosPool(std::unique_ptr<Impl> impl, std::string pool);
  std::unique_ptr<Impl> impl_;
  std::string pool_;
};

}  // namespace es::remote

// RadosPool over librados's C API.
#include "remote/rados.h"

#include <rados/librados.h>

#include <cerrno>
#include <cstring>

namespace es::remote {

namespace {

Status FromErrno(int rc, const std::string& what) {
  const int e = -rc;
  if (e == ENOENT || e == ENODATA) return Status::NotFound(what + ": no such object or attribute");
  if (e == ETIMEDOUT) return Status::IOError(what + ": timed out (the cluster or an OSD did not answer)");
  return Status::IOError(what + ": " + std::strerror(e));
}

}  // namespace

std::string RadosLocation::ToString() const { return "rados://" + pool + (prefix.empty() ? "" : "/" + prefix); }

Result<RadosLocation> ParseRadosUrl(std::string_view url) {
  constexpr std::string_view kScheme = "rados://";
  if (!url.starts_with(kScheme)) return Status::InvalidArgument("'" + std::string(url) + "' is not rados://POOL[/PREFIX]");
  std::string_view rest = url.substr(kScheme.size());
  RadosLocation l;
  const size_t slash = rest.find('/');
  l.pool = std::string(rest.substr(0, slash));
  if (slash != std::string_view::npos) {
    std::string prefix(rest.substr(slash + 1));
    while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
    if (!prefix.empty()) l.prefix = prefix + "/";
  }
  if (l.pool.empty()) return Status::InvalidArgument("'" + std::string(url) + "' names no pool (rados://POOL[/PREFIX])");
  return l;
}

struct RadosPool::Impl {
  rados_t cluster = nullptr;
  rados_ioctx_t io = nullptr;
  ~Impl() {
    if (io != nullptr) rados_ioctx_destroy(io);
    if (cluster != nullptr) rados_shutdown(cluster);
  }
};

RadosPool::RadosPool(std::unique_ptr<Impl> impl, std::string pool) : impl_(std::move(impl)), pool_(std::move(pool)) {}
RadosPool::~RadosPool() = default;

Result<std::unique_ptr<RadosPool>> RadosPool::Connect(const CephOptions& options, const std::string& pool) {
  auto impl = std::make_unique<Impl>();
  const std::string where = options.conf.empty() ? "the Ceph cluster ($CEPH_CONF or /etc/ceph/ceph.conf)"
                                                 : "the Ceph cluster of " + options.conf;
  int rc = rados_create(&impl->cluster, options.id.empty() ? nullptr : options.id.c_str());
  if (rc < 0) return FromErrno(rc, "creating a RADOS client");
  rc = rados_conf_read_file(impl->cluster, options.conf.empty() ? nullptr : options.conf.c_str());
  if (rc < 0) return FromErrno(rc, "reading the configuration of " + where);
  rados_conf_parse_env(impl->cluster, nullptr);
  if (!options.keyring.empty()) rados_conf_set(impl->cluster, "keyring", options.keyring.c_str());
  const std::string timeout = std::to_string(options.timeout_seconds);
  rados_conf_set(impl->cluster, "rados_mon_op_timeout", timeout.c_str());
  rados_conf_set(impl->cluster, "rados_osd_op_timeout", timeout.c_str());
  rados_conf_set(impl->cluster, "client_mount_timeout", timeout.c_str());
  rc = rados_connect(impl->cluster);
  if (rc < 0) return FromErrno(rc, "connecting to " + where);
  rc = rados_ioctx_create(impl->cluster, pool.c_str(), &impl->io);
  if (rc == -ENOENT) return Status::NotFound("the Ceph cluster has no pool '" + pool + "'");
  if (rc < 0) return FromErrno(rc, "opening pool " + pool);
  return std::unique_ptr<RadosPool>(new RadosPool(std::move(impl), pool));
}

Result<uint64_t> RadosPool::Size(const std::string& name) {
  uint64_t size = 0;
  time_t mtime = 0;
  const int rc = rados_stat(impl_->io, name.c_str(), &size, &mtime);
  if (rc < 0) return FromErrno(rc, "stat of " + pool_ + "/" + name);
  return size;
}

Status RadosPool::WriteFull(const std::string& name, std::span<const std::byte> data) {
  const int rc = rados_write_full(impl_->io, name.c_str(), reinterpret_cast<const char*>(data.data()), data.size());
  if (rc < 0) return FromErrno(rc, "writing " + pool_ + "/" + name);
  return Status::Ok();
}

Result<std::string> RadosPool::ReadAll(const std::string& name, uint64_t max_bytes) {
  ES_ASSIGN_OR_RETURN(uint64_t size, Size(name));
  if (size > max_bytes) {
    return Status::Corruption(pool_ + "/" + name + " holds " + std::to_string(size) + " bytes, more than the " +
                              std::to_string(max_bytes) + " expected");
  }
  std::string out(size, '\0');
  size_t done = 0;
  while (done < size) {
    const int rc = rados_read(impl_->io, name.c_str(), out.data() + done, size - done, done);
    if (rc < 0) return FromErrno(rc, "reading " + pool_ + "/" + name);
    if (rc == 0) return Status::Corruption(pool_ + "/" + name + " shrank while it was read");
    done += static_cast<size_t>(rc);
  }
  return out;
}

Result<std::string> RadosPool::GetXattr(const std::string& name, const std::string& key) {
  std::string value(256, '\0');
  const int rc = rados_getxattr(impl_->io, name.c_str(), key.c_str(), value.data(), value.size());
  if (rc < 0) return FromErrno(rc, "xattr " + key + " of " + pool_ + "/" + name);
  value.resize(static_cast<size_t>(rc));
  return value;
}

Status RadosPool::SetXattr(const std::string& name, const std::string& key, std::string_view value) {
  const int rc = rados_setxattr(impl_->io, name.c_str(), key.c_str(), value.data(), value.size());
  if (rc < 0) return FromErrno(rc, "setting xattr " + key + " of " + pool_ + "/" + name);
  return Status::Ok();
}

Status RadosPool::Remove(const std::string& name) {
  const int rc = rados_remove(impl_->io, name.c_str());
  if (rc < 0) return FromErrno(rc, "removing " + pool_ + "/" + name);
  return Status::Ok();
}

void RadosPool::ReadBatch(std::span<Read> reads, size_t in_flight, const std::function<void(size_t)>& on_done) {
  in_flight = std::max<size_t>(1, in_flight);
  for (size_t first = 0; first < reads.size(); first += in_flight) {
    const size_t n = std::min(in_flight, reads.size() - first);
    std::vector<rados_completion_t> done(n, nullptr);
    for (size_t i = 0; i < n; ++i) {
      Read& r = reads[first + i];
      r.status = Status::Ok();
      int rc = rados_aio_create_completion2(nullptr, nullptr, &done[i]);
      if (rc >= 0) {
        rc = rados_aio_read(impl_->io, r.name.c_str(), done[i], reinterpret_cast<char*>(r.buffer.data()),
                            r.buffer.size(), 0);
      }
      if (rc < 0) r.status = FromErrno(rc, "reading " + pool_ + "/" + r.name);
    }
    for (size_t i = 0; i < n; ++i) {
      Read& r = reads[first + i];
      if (done[i] != nullptr) {
        if (r.status.ok()) {
          rados_aio_wait_for_complete(done[i]);
          const int rc = rados_aio_get_return_value(done[i]);
          if (rc < 0) {
            r.status = FromErrno(rc, "reading " + pool_ + "/" + r.name);
          } else if (static_cast<size_t>(rc) != r.buffer.size()) {
            r.status = Status::Corruption(pool_ + "/" + r.name + " holds " + std::to_string(rc) + " bytes, not the " +
                                          std::to_string(r.buffer.size()) + " of its record");
          }
        }
        rados_aio_release(done[i]);
      }
      if (on_done) on_done(first + i);
    }
  }
}

void RadosPool::WriteBatch(std::span<Write> writes, size_t in_flight) {
  in_flight = std::max<size_t>(1, in_flight);
  for (size_t first = 0; first < writes.size(); first += in_flight) {
    const size_t n = std::min(in_flight, writes.size() - first);
    std::vector<rados_completion_t> done(n, nullptr);
    for (size_t i = 0; i < n; ++i) {
      Write& w = writes[first + i];
      w.status = Status::Ok();
      int rc = rados_aio_create_completion2(nullptr, nullptr, &done[i]);
      if (rc >= 0) {
        rc = rados_aio_write_full(impl_->io, w.name.c_str(), done[i], reinterpret_cast<const char*>(w.data.data()),
                                  w.data.size());
      }
      if (rc < 0) w.status = FromErrno(rc, "writing " + pool_ + "/" + w.name);
    }
    for (size_t i = 0; i < n; ++i) {
      Write& w = writes[first + i];
      if (done[i] == nullptr) continue;
      if (w.status.ok()) {
        rados_aio_wait_for_complete(done[i]);
        const int rc = rados_aio_get_return_value(done[i]);
        if (rc < 0) w.status = FromErrno(rc, "writing " + pool_ + "/" + w.name);
      }
      rados_aio_release(done[i]);
    }
  }
}

}  // namespace es::remote

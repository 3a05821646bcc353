// RadosPool over librados's C API.
#include "remote/rados.h"

#include <dlfcn.h>
#include <rados/librados.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <type_traits>

namespace es::remote {

namespace {

Status FromErrno(int rc, const std::string& what) {
  const int e = -rc;
  if (e == ENOENT || e == ENODATA) return Status::NotFound(what + ": no such object or attribute");
  if (e == ETIMEDOUT) return Status::IOError(what + ": timed out (the cluster or an OSD did not answer)");
  return Status::IOError(what + ": " + std::strerror(e));
}

// librados, loaded on first use (dlopen): commands that never touch a pool do not pay for Ceph's libraries
// (librados and libceph-common need about 150 MB of address space to load).
struct Librados {
  decltype(&::rados_create) create = nullptr;
  decltype(&::rados_conf_read_file) conf_read_file = nullptr;
  decltype(&::rados_conf_parse_env) conf_parse_env = nullptr;
  decltype(&::rados_conf_set) conf_set = nullptr;
  decltype(&::rados_connect) connect = nullptr;
  decltype(&::rados_ioctx_create) ioctx_create = nullptr;
  decltype(&::rados_ioctx_destroy) ioctx_destroy = nullptr;
  decltype(&::rados_shutdown) shutdown = nullptr;
  decltype(&::rados_stat) stat = nullptr;
  decltype(&::rados_write_full) write_full = nullptr;
  decltype(&::rados_read) read = nullptr;
  decltype(&::rados_getxattr) getxattr = nullptr;
  decltype(&::rados_setxattr) setxattr = nullptr;
  decltype(&::rados_remove) remove = nullptr;
  decltype(&::rados_aio_create_completion2) aio_create_completion2 = nullptr;
  decltype(&::rados_aio_read) aio_read = nullptr;
  decltype(&::rados_aio_wait_for_complete) aio_wait_for_complete = nullptr;
  decltype(&::rados_aio_get_return_value) aio_get_return_value = nullptr;
  decltype(&::rados_aio_release) aio_release = nullptr;
  decltype(&::rados_aio_write_full) aio_write_full = nullptr;
};

Result<const Librados*> Api() {
  static const Result<Librados> api = []() -> Result<Librados> {
    void* lib = ::dlopen("librados.so.2", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      return Status::NotSupported(std::string("librados is not installed (Debian: librados2; tools/setup.sh installs "
                                              "it): ") + ::dlerror());
    }
    Librados a;
    bool ok = true;
    auto load = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(lib, name));
      ok = ok && fn != nullptr;
    };
    load(a.create, "rados_create");
    load(a.conf_read_file, "rados_conf_read_file");
    load(a.conf_parse_env, "rados_conf_parse_env");
    load(a.conf_set, "rados_conf_set");
    load(a.connect, "rados_connect");
    load(a.ioctx_create, "rados_ioctx_create");
    load(a.ioctx_destroy, "rados_ioctx_destroy");
    load(a.shutdown, "rados_shutdown");
    load(a.stat, "rados_stat");
    load(a.write_full, "rados_write_full");
    load(a.read, "rados_read");
    load(a.getxattr, "rados_getxattr");
    load(a.setxattr, "rados_setxattr");
    load(a.remove, "rados_remove");
    load(a.aio_create_completion2, "rados_aio_create_completion2");
    load(a.aio_read, "rados_aio_read");
    load(a.aio_wait_for_complete, "rados_aio_wait_for_complete");
    load(a.aio_get_return_value, "rados_aio_get_return_value");
    load(a.aio_release, "rados_aio_release");
    load(a.aio_write_full, "rados_aio_write_full");
    if (!ok) return Status::NotSupported("this librados lacks a function expertstore needs (Ceph 16 or newer)");
    return a;
  }();
  if (!api.ok()) return api.status();
  return &*api;
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
  const Librados* api = nullptr;
  ~Impl() {
    if (io != nullptr) api->ioctx_destroy(io);
    if (cluster != nullptr) api->shutdown(cluster);
  }
};

RadosPool::RadosPool(std::unique_ptr<Impl> impl, std::string pool) : impl_(std::move(impl)), pool_(std::move(pool)) {}
RadosPool::~RadosPool() = default;

Result<std::unique_ptr<RadosPool>> RadosPool::Connect(const CephOptions& options, const std::string& pool) {
  auto impl = std::make_unique<Impl>();
  ES_ASSIGN_OR_RETURN(impl->api, Api());
  const std::string where = options.conf.empty() ? "the Ceph cluster ($CEPH_CONF or /etc/ceph/ceph.conf)"
                                                 : "the Ceph cluster of " + options.conf;
  int rc = impl->api->create(&impl->cluster, options.id.empty() ? nullptr : options.id.c_str());
  if (rc < 0) return FromErrno(rc, "creating a RADOS client");
  rc = impl->api->conf_read_file(impl->cluster, options.conf.empty() ? nullptr : options.conf.c_str());
  if (rc == -ENOENT) {
    return Status::NotFound(options.conf.empty() ? "no Ceph configuration found ($CEPH_CONF, /etc/ceph/ceph.conf)"
                                                 : "no Ceph configuration at " + options.conf);
  }
  if (rc < 0) return FromErrno(rc, "reading the configuration of " + where);
  impl->api->conf_parse_env(impl->cluster, nullptr);
  if (!options.keyring.empty()) impl->api->conf_set(impl->cluster, "keyring", options.keyring.c_str());
  const std::string timeout = std::to_string(options.timeout_seconds);
  impl->api->conf_set(impl->cluster, "rados_mon_op_timeout", timeout.c_str());
  impl->api->conf_set(impl->cluster, "rados_osd_op_timeout", timeout.c_str());
  impl->api->conf_set(impl->cluster, "client_mount_timeout", timeout.c_str());
  rc = impl->api->connect(impl->cluster);
  if (rc < 0) return FromErrno(rc, "connecting to " + where);
  rc = impl->api->ioctx_create(impl->cluster, pool.c_str(), &impl->io);
  if (rc == -ENOENT) return Status::NotFound("the Ceph cluster has no pool '" + pool + "'");
  if (rc < 0) return FromErrno(rc, "opening pool " + pool);
  return std::unique_ptr<RadosPool>(new RadosPool(std::move(impl), pool));
}

Result<uint64_t> RadosPool::Size(const std::string& name) {
  uint64_t size = 0;
  time_t mtime = 0;
  const int rc = impl_->api->stat(impl_->io, name.c_str(), &size, &mtime);
  if (rc < 0) return FromErrno(rc, "stat of " + pool_ + "/" + name);
  return size;
}

Status RadosPool::WriteFull(const std::string& name, std::span<const std::byte> data) {
  const int rc = impl_->api->write_full(impl_->io, name.c_str(), reinterpret_cast<const char*>(data.data()), data.size());
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
    const int rc = impl_->api->read(impl_->io, name.c_str(), out.data() + done, size - done, done);
    if (rc < 0) return FromErrno(rc, "reading " + pool_ + "/" + name);
    if (rc == 0) return Status::Corruption(pool_ + "/" + name + " shrank while it was read");
    done += static_cast<size_t>(rc);
  }
  return out;
}

Result<std::string> RadosPool::GetXattr(const std::string& name, const std::string& key) {
  std::string value(256, '\0');
  const int rc = impl_->api->getxattr(impl_->io, name.c_str(), key.c_str(), value.data(), value.size());
  if (rc < 0) return FromErrno(rc, "xattr " + key + " of " + pool_ + "/" + name);
  value.resize(static_cast<size_t>(rc));
  return value;
}

Status RadosPool::SetXattr(const std::string& name, const std::string& key, std::string_view value) {
  const int rc = impl_->api->setxattr(impl_->io, name.c_str(), key.c_str(), value.data(), value.size());
  if (rc < 0) return FromErrno(rc, "setting xattr " + key + " of " + pool_ + "/" + name);
  return Status::Ok();
}

Status RadosPool::Remove(const std::string& name) {
  const int rc = impl_->api->remove(impl_->io, name.c_str());
  if (rc < 0) return FromErrno(rc, "removing " + pool_ + "/" + name);
  return Status::Ok();
}

namespace {

// Runs `count` asynchronous operations, up to `in_flight` at once (a sliding window), and completes them in order:
// submit(i, completion) starts operation i and returns librados's code; finish(i, rc) gets the code of a failed
// start or the operation's return value.
void RunAio(const Librados& api, size_t count, size_t in_flight,
            const std::function<int(size_t, rados_completion_t)>& submit, const std::function<void(size_t, int)>& finish) {
  std::deque<std::pair<size_t, rados_completion_t>> window;
  size_t next = 0;
  auto complete_front = [&] {
    auto [i, c] = window.front();
    window.pop_front();
    api.aio_wait_for_complete(c);
    const int rc = api.aio_get_return_value(c);
    api.aio_release(c);
    finish(i, rc);
  };
  while (next < count || !window.empty()) {
    if (next < count && window.size() < std::max<size_t>(1, in_flight)) {
      const size_t i = next++;
      rados_completion_t c = nullptr;
      int rc = api.aio_create_completion2(nullptr, nullptr, &c);
      if (rc >= 0) rc = submit(i, c);
      if (rc < 0) {
        if (c != nullptr) api.aio_release(c);
        // Earlier operations complete first, so that `finish` sees every index in order.
        while (!window.empty()) complete_front();
        finish(i, rc);
        continue;
      }
      window.push_back({i, c});
      continue;
    }
    complete_front();
  }
}

}  // namespace

void RadosPool::ReadBatch(std::span<Read> reads, size_t in_flight, const std::function<void(size_t)>& on_done) {
  RunAio(*impl_->api, reads.size(), in_flight,
         [&](size_t i, rados_completion_t c) {
           Read& r = reads[i];
           return impl_->api->aio_read(impl_->io, r.name.c_str(), c, reinterpret_cast<char*>(r.buffer.data()),
                                       r.buffer.size(), 0);
         },
         [&](size_t i, int rc) {
           Read& r = reads[i];
           r.status = Status::Ok();
           if (rc < 0) {
             r.status = FromErrno(rc, "reading " + pool_ + "/" + r.name);
           } else if (static_cast<size_t>(rc) != r.buffer.size()) {
             r.status = Status::Corruption(pool_ + "/" + r.name + " holds " + std::to_string(rc) + " bytes, not the " +
                                           std::to_string(r.buffer.size()) + " of its record");
           }
           if (on_done) on_done(i);
         });
}

void RadosPool::WriteBatch(std::span<Write> writes, size_t in_flight) {
  RunAio(*impl_->api, writes.size(), in_flight,
         [&](size_t i, rados_completion_t c) {
           Write& w = writes[i];
           return impl_->api->aio_write_full(impl_->io, w.name.c_str(), c, reinterpret_cast<const char*>(w.data.data()),
                                             w.data.size());
         },
         [&](size_t i, int rc) {
           writes[i].status = rc < 0 ? FromErrno(rc, "writing " + pool_ + "/" + writes[i].name) : Status::Ok();
         });
}

}  // namespace es::remote

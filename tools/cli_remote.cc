// The RADOS tier's commands: publish (a model's records to a Ceph pool) and attach (a published model to this store).
#include "remote/rados.h"
#include "remote/tier.h"
#include "store/base/json.h"
#include "tools/cli.h"

namespace es::cli {

namespace {

std::vector<FlagSpec> CephFlags() {
  return {{"ceph-conf", true, "the cluster's ceph.conf (default: $CEPH_CONF, then /etc/ceph/ceph.conf)"},
          {"ceph-id", true, "the client id (client.ID; default admin)"},
          {"ceph-keyring", true, "the keyring (default: what the configuration names)"},
          {"ceph-timeout", true, "seconds any cluster operation may take (default 30)"}};
}

Result<remote::CephOptions> CephOptionsFromArgs(const Args& args) {
  remote::CephOptions o;
  o.conf = args.GetOr("ceph-conf", "");
  o.id = args.GetOr("ceph-id", o.id);
  o.keyring = args.GetOr("ceph-keyring", "");
  ES_ASSIGN_OR_RETURN(int64_t timeout, args.GetInt("ceph-timeout", o.timeout_seconds, 1, 3600));
  o.timeout_seconds = static_cast<uint32_t>(timeout);
  return o;
}

Status RunPublish(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(std::string to, args.Require("to"));
  ES_ASSIGN_OR_RETURN(remote::RadosLocation where, remote::ParseRadosUrl(to));
  ES_ASSIGN_OR_RETURN(remote::CephOptions ceph, CephOptionsFromArgs(args));
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/false));
  ES_ASSIGN_OR_RETURN(auto pool, remote::RadosPool::Connect(ceph, where.pool));
  remote::PublishOptions o;
  o.metadata_only = args.Has("metadata");
  ES_ASSIGN_OR_RETURN(remote::PublishReport r, remote::PublishModel(*store, model, *pool, where, o));
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("model").String(model).Key("to").String(where.ToString()).Key("objects").Uint(r.objects)
        .Key("written").Uint(r.written).Key("skipped").Uint(r.skipped).Key("bytes_written").Uint(r.bytes_written)
        .Key("seconds").Double(r.seconds).Key("metadata_only").Bool(o.metadata_only).EndObject();
    PrintJson(w);
  } else if (!args.global().quiet) {
    std::printf("published %s to %s: %llu record objects (%llu written, %s, %llu already there) and the manifest in "
                "%.1f s\n",
                model.c_str(), where.ToString().c_str(), static_cast<unsigned long long>(r.objects),
                static_cast<unsigned long long>(r.written), HumanBytes(r.bytes_written).c_str(),
                static_cast<unsigned long long>(r.skipped), r.seconds);
  }
  return Status::Ok();
}

Status RunAttach(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ES_ASSIGN_OR_RETURN(std::string from, args.Require("from"));
  ES_ASSIGN_OR_RETURN(remote::RadosLocation where, remote::ParseRadosUrl(from));
  ES_ASSIGN_OR_RETURN(remote::CephOptions ceph, CephOptionsFromArgs(args));
  // The pool first: an attach that cannot reach it leaves no store behind.
  ES_ASSIGN_OR_RETURN(auto pool, remote::RadosPool::Connect(ceph, where.pool));
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/true, /*create=*/true));
  ES_ASSIGN_OR_RETURN(remote::AttachReport r,
                      remote::AttachModel(*store, *pool, where, model, args.GetOr("name", ""), ceph));
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("model").String(r.model).Key("from").String(where.ToString()).Key("tier").Uint(r.tier)
        .Key("experts").Uint(r.experts).Key("tensors").Uint(r.tensors).Key("metadata_records")
        .Uint(r.metadata_records).Key("already_attached").Bool(r.already).EndObject();
    PrintJson(w);
  } else if (!args.global().quiet) {
    if (r.already) {
      std::printf("%s is attached from %s already (tier %u)\n", r.model.c_str(), where.ToString().c_str(), r.tier);
    } else {
      std::printf("attached %s from %s as tier %u: %llu experts, %llu dense tensors, %llu metadata records; its "
                  "records stay in the pool\n",
                  r.model.c_str(), where.ToString().c_str(), r.tier, static_cast<unsigned long long>(r.experts),
                  static_cast<unsigned long long>(r.tensors), static_cast<unsigned long long>(r.metadata_records));
    }
  }
  return Status::Ok();
}

std::vector<FlagSpec> With(std::vector<FlagSpec> own) {
  for (FlagSpec& f : CephFlags()) own.push_back(std::move(f));
  return own;
}

}  // namespace

void RegisterRemoteCommands(std::vector<Command>& commands) {
  commands.push_back({"publish", "publish --model M --to rados://POOL[/PREFIX] [--metadata] [--ceph-conf F]",
                      "write a model's records to a Ceph RADOS pool, one object each, then its manifest; re-running "
                      "skips what is there, an interrupted run resumes",
                      With({{"model", true, "model name"},
                            {"to", true, "rados://POOL[/PREFIX]"},
                            {"metadata", false, "only the manifest again, with the usage, trust and profiles of now"}}),
                      RunPublish});
  commands.push_back({"attach", "attach --from rados://POOL[/PREFIX] --model M [--name N] [--ceph-conf F]",
                      "make a model published to a RADOS pool one of this store's, reading its records from the "
                      "pool (no bulk copy)",
                      With({{"from", true, "rados://POOL[/PREFIX]"},
                            {"model", true, "the published model"},
                            {"name", true, "its name in this store (default: the same)"}}),
                      RunAttach});
}

}  // namespace es::cli

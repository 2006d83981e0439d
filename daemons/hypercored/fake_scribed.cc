#include "daemons/hypercored/fake_scribed.h"

#include <capnp/dynamic.h>
#include <capnp/schema.h>

#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "daemons/scribed/admin_service.h"
#include "daemons/scribed/admin_test_support.h"
#include "scribe/nbd_server.h"

namespace hypercore::daemon::testing {
namespace {

namespace api = ::scribe::api;
constexpr uint64_t kScribeAdminId = capnp::typeId<api::ScribeAdmin>();

std::string ValueText(const capnp::DynamicValue::Reader& v) {
  switch (v.getType()) {
    case capnp::DynamicValue::TEXT: {
      auto t = v.as<capnp::Text>();
      return std::string(t.begin(), t.size());
    }
    case capnp::DynamicValue::LIST: {
      std::vector<std::string> items;
      for (auto item : v.as<capnp::DynamicList>()) items.push_back(ValueText(item));
      return absl::StrJoin(items, ",");
    }
    default:
      return std::string(kj::str(v).cStr());
  }
}

}  // namespace

struct FakeScribed::Impl {
  // The recording front (see the header).
  class Recorder final : public capnp::Capability::Server {
   public:
    explicit Recorder(Impl* impl) : impl_(impl) {}
    DispatchCallResult dispatchCall(uint64_t interface_id, uint16_t method_id,
                                    capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override {
      if (interface_id != kScribeAdminId) {
        return {KJ_EXCEPTION(UNIMPLEMENTED, "not ScribeAdmin"), false};
      }
      auto schema = capnp::Schema::from<api::ScribeAdmin>();
      auto methods = schema.getMethods();
      if (method_id >= methods.size()) return {KJ_EXCEPTION(UNIMPLEMENTED, "unknown method"), false};
      auto method = methods[method_id];
      const std::string name = method.getProto().getName().cStr();
      auto params = context.getParams().getAs<capnp::DynamicStruct>(method.getParamType());
      std::vector<std::string> words = {name};
      for (auto field : method.getParamType().getFields()) words.push_back(ValueText(params.get(field)));
      impl_->Record(absl::StrJoin(words, " "));

      absl::Status injected = impl_->TakeFailure(name);
      if (injected.ok() && name == "createVsd") injected = impl_->CheckSpace(params.get("sizeBytes").as<uint64_t>());
      if (injected.ok() && name == "fenceVsd") {
        auto vsd = params.get("vsd").as<capnp::Text>();
        injected = impl_->Fence(std::string(vsd.begin(), vsd.size()), params.get("epoch").as<uint64_t>());
        if (injected.ok()) {
          context.getResults().initAs<capnp::DynamicStruct>(method.getResultType()).init("error");
          return {kj::READY_NOW, false};
        }
      }
      if (!injected.ok()) {
        auto results = context.getResults().initAs<capnp::DynamicStruct>(method.getResultType());
        auto error = results.init("error").as<capnp::DynamicStruct>();
        error.set("code", static_cast<uint16_t>(injected.code()));
        const std::string message(injected.message());
        error.set("message", capnp::Text::Reader(message.c_str(), message.size()));
        return {kj::READY_NOW, false};
      }
      auto request = impl_->real.typelessRequest(interface_id, method_id, context.getParams().targetSize());
      request.set(context.getParams());
      context.releaseParams();
      return {context.tailCall(kj::mv(request)), false};
    }

   private:
    Impl* impl_;
  };

  void Record(const std::string& line) {
    calls.push_back(line);
    if (observer) observer(line);
  }

  absl::Status TakeFailure(const std::string& method) {
    auto it = failures.find(method);
    if (it == failures.end() || it->second.empty()) return absl::OkStatus();
    absl::Status st = it->second.front();
    it->second.pop_front();
    return st;
  }

  absl::Status CheckSpace(uint64_t size_bytes) {
    if (options.vsd_bytes_max == 0) return absl::OkStatus();
    uint64_t used = 0;
    for (const scribe::VsdInfo& v : backend->real_pool()->ListVsds()) used += v.size_bytes;
    if (used + size_bytes > options.vsd_bytes_max) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "the pool is full: %d bytes of VSDs exist, %d more would pass the %d the pool can hold", used,
          size_bytes, options.vsd_bytes_max));
    }
    return absl::OkStatus();
  }

  absl::Status Fence(const std::string& vsd, uint64_t epoch) {
    if (!backend->real_pool()->FindVsd(vsd).ok()) {
      return absl::NotFoundError(absl::StrCat("no VSD named \"", vsd, "\""));
    }
    uint64_t& current = fences[vsd];
    if (epoch < current) {
      return absl::FailedPreconditionError(
          absl::StrCat("VSD \"", vsd, "\" is fenced at epoch ", current, "; epoch ", epoch, " is older"));
    }
    current = epoch;
    return absl::OkStatus();
  }

  FakeScribedOptions options;
  std::unique_ptr<scribe::daemon::testing::FilePoolBackend> backend;
  std::unique_ptr<scribe::NbdServer> nbd;
  capnp::Capability::Client real = nullptr;
  api::ScribeAdmin::Client front = nullptr;
  std::vector<std::string> calls;
  std::function<void(const std::string&)> observer;
  std::map<std::string, uint64_t> fences;
  std::map<std::string, std::deque<absl::Status>> failures;
};

absl::StatusOr<std::unique_ptr<FakeScribed>> FakeScribed::Create(scribe::RealLoop* loop,
                                                                 FakeScribedOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  scribe::daemon::testing::FilePoolOptions pool_options;
  pool_options.dir = options.dir;
  pool_options.disk_bytes = options.disk_bytes;
  pool_options.metadata_bytes = 8ull << 20;
  auto backend = scribe::daemon::testing::FilePoolBackend::Create(loop, pool_options);
  if (!backend.ok()) return backend.status();
  impl->backend = *std::move(backend);
  impl->backend->cluster().nodes[0].nbd_socket = options.nbd_socket;
  auto nbd = scribe::NbdServer::Create(loop, impl->backend->real_pool(), options.nbd_socket);
  if (!nbd.ok()) return nbd.status();
  impl->nbd = *std::move(nbd);
  impl->real = scribe::daemon::NewAdminService(loop, impl->backend.get());
  impl->front = capnp::Capability::Client(kj::heap<Impl::Recorder>(impl.get())).castAs<api::ScribeAdmin>();
  return std::unique_ptr<FakeScribed>(new FakeScribed(std::move(impl)));
}

FakeScribed::FakeScribed(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FakeScribed::~FakeScribed() = default;

scribe::api::ScribeAdmin::Client FakeScribed::client() { return impl_->front; }
const std::string& FakeScribed::nbd_socket() const { return impl_->options.nbd_socket; }
scribe::Pool* FakeScribed::pool() { return impl_->backend->real_pool(); }
const std::vector<std::string>& FakeScribed::calls() const { return impl_->calls; }

std::vector<std::string> FakeScribed::CallsOf(const std::string& method) const {
  std::vector<std::string> out;
  for (const std::string& line : impl_->calls) {
    if (line == method || line.rfind(method + " ", 0) == 0) out.push_back(line);
  }
  return out;
}

void FakeScribed::ClearCalls() { impl_->calls.clear(); }
void FakeScribed::SetCallObserver(std::function<void(const std::string&)> observer) {
  impl_->observer = std::move(observer);
}
std::map<std::string, uint64_t> FakeScribed::fences() const { return impl_->fences; }
void FakeScribed::FailNext(const std::string& method, absl::Status status) {
  impl_->failures[method].push_back(std::move(status));
}

}  // namespace hypercore::daemon::testing

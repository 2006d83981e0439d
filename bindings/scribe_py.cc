// The `scribe` Python module: bindings over libscribe's public API. Bindings wrap the
// library, never its RPC; every absl::Status crosses into Python through status_py.h.
#include <pybind11/pybind11.h>

#include <string>

#include "absl/status/status.h"
#include "bindings/status_py.h"

namespace py = pybind11;

namespace scribe::python {
void RegisterPool(py::module_& m);
namespace {

constexpr char kVersion[] = "0.1.0";

// Test hook: raises what a library call returning Status(code, message) raises.
void RaiseStatus(int code, const std::string& message) {
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    throw py::value_error("not an absl::StatusCode: " + std::to_string(code));
  }
  ThrowIfError(absl::Status(static_cast<absl::StatusCode>(code), message));
}

}  // namespace
}  // namespace scribe::python

PYBIND11_MODULE(scribe, m) {
  m.doc() = "Python bindings of libscribe, the SCRIBE block engine.";
  m.attr("__version__") = scribe::python::kVersion;
  scribe::python::RegisterStatusExceptions(m);
  scribe::python::RegisterPool(m);
  m.def("_raise_status", &scribe::python::RaiseStatus, py::arg("code"), py::arg("message"),
        "Test hook: raises the exception a Status(code, message) maps to; "
        "returns None for code 0 (OK).");
}

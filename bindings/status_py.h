// The one mapping from absl::Status to Python exceptions, shared by every binding.
//
// Python sees a single hierarchy rooted at scribe.Error; codes with a natural builtin
// counterpart also derive from it, so `except KeyError` keeps working:
//
//   NotFoundError(Error, KeyError)        InvalidArgumentError(Error, ValueError)
//   OutOfRangeError(Error, IndexError)    ResourceExhaustedError(Error)
//   FailedPreconditionError(Error)        AlreadyExistsError(Error)
//   UnavailableError(Error)               DataLossError(Error)
//   InternalError(Error)
//
// Every other non-OK code raises scribe.Error itself. Each raised exception carries
// `code` (the absl::StatusCode as an int) and str(e) is the status message.
//
// Threading: everything here must run with the GIL held (i.e. in binding code, not
// inside a py::gil_scoped_release block).
#ifndef BINDINGS_STATUS_PY_H_
#define BINDINGS_STATUS_PY_H_

#include <pybind11/pybind11.h>

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace scribe::python {

// The module that owns the exception classes (PYBIND11_MODULE(scribe, m)). Another
// module (`hypercore`) registers the same hierarchy in itself and names itself when
// raising.
inline constexpr char kModuleName[] = "scribe";

namespace status_internal {

// Python class name for `code`: one of the subclasses above, or "Error".
inline const char* ExceptionName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kNotFound:
      return "NotFoundError";
    case absl::StatusCode::kInvalidArgument:
      return "InvalidArgumentError";
    case absl::StatusCode::kOutOfRange:
      return "OutOfRangeError";
    case absl::StatusCode::kResourceExhausted:
      return "ResourceExhaustedError";
    case absl::StatusCode::kFailedPrecondition:
      return "FailedPreconditionError";
    case absl::StatusCode::kAlreadyExists:
      return "AlreadyExistsError";
    case absl::StatusCode::kUnavailable:
      return "UnavailableError";
    case absl::StatusCode::kDataLoss:
      return "DataLossError";
    case absl::StatusCode::kInternal:
      return "InternalError";
    default:
      return "Error";
  }
}

// Creates the exception class `name` in `module` with `bases` (a class or a tuple).
inline pybind11::object AddExceptionClass(pybind11::module_& module, const char* name,
                                          const char* doc, pybind11::handle bases,
                                          pybind11::dict attributes) {
  const std::string qualified =
      std::string(pybind11::str(module.attr("__name__"))) + "." + name;
  PyObject* cls = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases.ptr(),
                                            attributes.ptr());
  if (cls == nullptr) throw pybind11::error_already_set();
  auto object = pybind11::reinterpret_steal<pybind11::object>(cls);
  module.add_object(name, object);
  return object;
}

}  // namespace status_internal

// Adds scribe.Error and its subclasses to `module`. Call once, from PYBIND11_MODULE.
inline void RegisterStatusExceptions(pybind11::module_& module) {
  namespace py = pybind11;
  using status_internal::AddExceptionClass;
  py::module_ builtins = py::module_::import("builtins");

  py::dict error_attributes;
  // KeyError's str() would quote the message; every scribe error prints it as is.
  error_attributes["__str__"] = builtins.attr("BaseException").attr("__str__");
  // The absl::StatusCode of the status that raised it; set on every raised instance.
  error_attributes["code"] = static_cast<int>(absl::StatusCode::kUnknown);
  py::object error = AddExceptionClass(
      module, "Error", "Base of every error scribe raises (a non-OK absl::Status).",
      builtins.attr("Exception"), error_attributes);

  struct Subclass {
    absl::StatusCode code;
    const char* builtin;  // A second base from builtins, or nullptr.
    const char* doc;
  };
  static constexpr Subclass kSubclasses[] = {
      {absl::StatusCode::kNotFound, "KeyError", "The named object does not exist."},
      {absl::StatusCode::kInvalidArgument, "ValueError", "An argument is malformed."},
      {absl::StatusCode::kOutOfRange, "IndexError", "An offset or index is out of range."},
      {absl::StatusCode::kResourceExhausted, nullptr, "Out of space, quota or slots."},
      {absl::StatusCode::kFailedPrecondition, nullptr,
       "The system is not in the state the call requires (e.g. a stale epoch)."},
      {absl::StatusCode::kAlreadyExists, nullptr, "The object to create exists."},
      {absl::StatusCode::kUnavailable, nullptr, "Transiently unavailable; retry later."},
      {absl::StatusCode::kDataLoss, nullptr, "Data is lost or corrupt."},
      {absl::StatusCode::kInternal, nullptr, "A broken invariant inside scribe."},
  };
  for (const Subclass& subclass : kSubclasses) {
    py::object bases = subclass.builtin == nullptr
                           ? error
                           : py::object(py::make_tuple(error, builtins.attr(subclass.builtin)));
    AddExceptionClass(module, status_internal::ExceptionName(subclass.code), subclass.doc,
                      bases, py::dict());
  }
}

// Raises the Python exception `status` maps to (a class of `module`, which registered
// them); returns if `status` is OK.
inline void ThrowIfError(const absl::Status& status, const char* module = kModuleName) {
  namespace py = pybind11;
  if (status.ok()) return;
  py::object cls = py::module_::import(module)
                       .attr(status_internal::ExceptionName(status.code()));
  const absl::string_view message = status.message();
  // Messages are meant to be UTF-8; a stray byte must not turn into a decoding error.
  PyObject* text = PyUnicode_DecodeUTF8(message.data(), static_cast<Py_ssize_t>(message.size()),
                                        "backslashreplace");
  if (text == nullptr) throw py::error_already_set();
  py::object exception = cls(py::reinterpret_steal<py::str>(text));
  exception.attr("code") = static_cast<int>(status.code());
  PyErr_SetObject(cls.ptr(), exception.ptr());
  throw py::error_already_set();
}

// The value of `status_or`, or raises as ThrowIfError does.
template <typename T>
T ValueOrThrow(absl::StatusOr<T> status_or, const char* module = kModuleName) {
  ThrowIfError(status_or.status(), module);
  return *std::move(status_or);
}

}  // namespace scribe::python

#endif  // BINDINGS_STATUS_PY_H_

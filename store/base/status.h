// Status and Result<T>: how every expertstore library function reports failure. The library never throws and
// never exits; a Status names a category (the Code) and carries a one-line human message.
#pragma once

#include <cstdint>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace es {

class [[nodiscard]] Status {
 public:
  enum class Code : uint8_t {
    kOk = 0,
    kNotFound,
    kCorruption,
    kInvalidArgument,
    kIOError,
    kNotSupported,
    kResourceExhausted,  // out of disk space, memory, slots, or a configured limit
    kBusy,               // another process holds a resource (the store's writer lock)
  };

  Status() = default;

  static Status Ok() { return Status(); }
  static Status NotFound(std::string_view msg) { return Status(Code::kNotFound, msg); }
  static Status Corruption(std::string_view msg) { return Status(Code::kCorruption, msg); }
  static Status InvalidArgument(std::string_view msg) { return Status(Code::kInvalidArgument, msg); }
  static Status IOError(std::string_view msg) { return Status(Code::kIOError, msg); }
  static Status NotSupported(std::string_view msg) { return Status(Code::kNotSupported, msg); }
  static Status ResourceExhausted(std::string_view msg) { return Status(Code::kResourceExhausted, msg); }
  static Status Busy(std::string_view msg) { return Status(Code::kBusy, msg); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  bool IsNotFound() const { return code_ == Code::kNotFound; }
  bool IsCorruption() const { return code_ == Code::kCorruption; }
  bool IsInvalidArgument() const { return code_ == Code::kInvalidArgument; }
  bool IsIOError() const { return code_ == Code::kIOError; }
  bool IsNotSupported() const { return code_ == Code::kNotSupported; }
  bool IsResourceExhausted() const { return code_ == Code::kResourceExhausted; }
  bool IsBusy() const { return code_ == Code::kBusy; }

  const std::string& message() const { return message_; }
  // "Corruption: <message>", or "OK".
  std::string ToString() const;
  // A copy with "<context>: " put in front of the message, same code.
  Status WithContext(std::string_view context) const;

  // Explicitly drops a status whose failure is harmless at the call site.
  void IgnoreError() const {}

 private:
  Status(Code code, std::string_view msg) : code_(code), message_(msg) {}

  Code code_ = Code::kOk;
  std::string message_;
};

std::string_view StatusCodeName(Status::Code code);
// The code in snake case ("not_found"): the `code` field of the CLI's and the HTTP service's JSON errors.
std::string_view StatusCodeSlug(Status::Code code);

// Either a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design, like absl::StatusOr
  Result(Status status) : status_(std::move(status)) {  // NOLINT
    if (status_.ok()) status_ = Status::InvalidArgument("Result constructed from an OK status without a value");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace es

#define ES_CONCAT_INNER_(a, b) a##b
#define ES_CONCAT_(a, b) ES_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when it is not OK.
#define ES_RETURN_IF_ERROR(expr)                  \
  do {                                            \
    ::es::Status es_status_ = (expr);             \
    if (!es_status_.ok()) return es_status_;      \
  } while (0)

// `ES_ASSIGN_OR_RETURN(auto x, F());` binds the value of a Result or returns its status.
#define ES_ASSIGN_OR_RETURN(lhs, expr) ES_ASSIGN_OR_RETURN_IMPL_(ES_CONCAT_(es_result_, __LINE__), lhs, expr)
#define ES_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

// Test file helpers over the project's own file system.
#include "tests/util/files.h"

#include <gtest/gtest.h>

#include "store/base/file_system.h"

namespace es::testing {

std::string ReadText(const std::string& path) {
  Result<std::string> text = ReadFile(*DefaultFileSystem(), path);
  if (!text.ok()) {
    ADD_FAILURE() << text.status().ToString();
    return "";
  }
  return std::move(text).value();
}

void WriteText(const std::string& path, const std::string& text) {
  Status s = WriteFileAtomic(DefaultFileSystem(), path, text);
  if (!s.ok()) ADD_FAILURE() << s.ToString();
}

}  // namespace es::testing

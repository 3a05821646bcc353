// Whole-file reading and writing for tests: a file that cannot be read or written is a test failure (not an
// exception or a silent empty string).
#pragma once

#include <string>

namespace es::testing {

// The file's bytes; adds a test failure naming the file and the reason when it cannot be read (then "").
std::string ReadText(const std::string& path);
// Replaces the file's contents; adds a test failure when it cannot.
void WriteText(const std::string& path, const std::string& text);

}  // namespace es::testing

# cmake -DINPUT=file -DOUTPUT=file.cc -DSYMBOL=Name -DHEADER=path/to/header.h -P EsEmbedText.cmake: writes a C++ file
# whose function `std::string_view es::api::SYMBOL()` returns INPUT's text, so that static files (the dashboard)
# are compiled into the binary. The raw string's delimiter must not occur in the text.
file(READ "${INPUT}" text)
string(FIND "${text}" ")ESTEXT\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${INPUT} contains the raw string delimiter )ESTEXT\"")
endif()
file(WRITE "${OUTPUT}.tmp" "// Generated from ${INPUT} by cmake/EsEmbedText.cmake; do not edit.\n#include \"${HEADER}\"\n\nnamespace es::api {\n\nstd::string_view ${SYMBOL}() {\n  static constexpr char kText[] = R\"ESTEXT(${text})ESTEXT\";\n  return {kText, sizeof(kText) - 1};\n}\n\n}  // namespace es::api\n")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUTPUT}.tmp")

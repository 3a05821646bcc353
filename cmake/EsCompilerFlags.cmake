# Warning and sanitizer flags shared by every target of the project. They are GCC/Clang flags, so they go to the
# C and C++ compilers only: nvcc rejects them, and es_cuda passes its host-compiler warnings itself.
set(ES_HOST_LANGUAGES "$<COMPILE_LANGUAGE:C,CXX>")
add_compile_options("$<${ES_HOST_LANGUAGES}:-Wall;-Wextra;-Wno-unused-parameter;-fno-omit-frame-pointer>")
# GCC 12 warns falsely about `"literal" + std::string` inside libstdc++ at -O2 (GCC bug 105329, fixed in 13);
# every instance in this tree was that, so the warning is off for GCC 12 only.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:-Wno-restrict>")
endif()
if(ES_ASAN)
  add_compile_options("$<${ES_HOST_LANGUAGES}:-fsanitize=address,undefined;-fno-sanitize-recover=undefined>")
  add_link_options(-fsanitize=address,undefined)
  add_compile_definitions(ES_SANITIZER=1)
endif()
if(ES_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "ES_FUZZ needs clang (libFuzzer): configure with CC=clang-14 CXX=clang++-14")
  endif()
  # Every library carries libFuzzer's coverage and ASan+UBSan, so the fuzz targets (tests/*/..._fuzz.cc) link the
  # libraries as they are; each target adds -fsanitize=fuzzer for libFuzzer's main.
  add_compile_options("$<${ES_HOST_LANGUAGES}:-fsanitize=fuzzer-no-link,address,undefined;-fno-sanitize-recover=undefined>")
  add_link_options(-fsanitize=address,undefined)
endif()
if(ES_TSAN)
  add_compile_options("$<${ES_HOST_LANGUAGES}:-fsanitize=thread>")
  add_link_options(-fsanitize=thread)
  add_compile_definitions(ES_SANITIZER=1 ES_TSAN=1)
endif()

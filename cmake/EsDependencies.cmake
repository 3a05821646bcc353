# Finds every third-party dependency once and exposes it as an imported target.
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
find_package(RocksDB CONFIG REQUIRED)
find_package(simdjson CONFIG REQUIRED)
find_package(FlatBuffers CONFIG REQUIRED)
find_program(FLATC flatc REQUIRED)
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
if(ES_JEMALLOC)
  pkg_check_modules(JEMALLOC IMPORTED_TARGET jemalloc)
  if(NOT JEMALLOC_FOUND)
    message(FATAL_ERROR "jemalloc not found: apt-get install libjemalloc-dev (tools/setup.sh does), or -DES_JEMALLOC=OFF")
  endif()
endif()
# ICU: Unicode properties and normalization for the tokenizer; i18n (regex) only as the tests' oracle.
find_package(ICU REQUIRED COMPONENTS uc i18n)
# Boost.Beast and Boost.Asio (header-only) for the HTTP service, api/ only.
find_package(Boost 1.81 REQUIRED)
if(ES_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(ES_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()

# es_flatbuffers_generate(<target> <schema.fbs>... [INCLUDES <other.fbs>...]): runs flatc into the binary dir
# and adds the generated headers' directory to <target>'s include path. Schemas may include others by their
# path from the project root (`include "store/catalog.fbs";`); list those under INCLUDES so that a change to
# them regenerates.
function(es_flatbuffers_generate target)
  cmake_parse_arguments(FB "" "" "INCLUDES" ${ARGN})
  set(outputs)
  foreach(schema ${FB_UNPARSED_ARGUMENTS})
    get_filename_component(name ${schema} NAME_WE)
    set(out ${CMAKE_CURRENT_BINARY_DIR}/generated/${name}_generated.h)
    add_custom_command(
      OUTPUT ${out}
      COMMAND ${FLATC} --cpp --scoped-enums -I ${PROJECT_SOURCE_DIR} -o ${CMAKE_CURRENT_BINARY_DIR}/generated
              ${CMAKE_CURRENT_SOURCE_DIR}/${schema}
      DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${schema} ${FB_INCLUDES}
      COMMENT "flatc ${schema}")
    list(APPEND outputs ${out})
  endforeach()
  target_sources(${target} PRIVATE ${outputs})
  target_include_directories(${target} PUBLIC ${CMAKE_CURRENT_BINARY_DIR}/generated)
endfunction()

// Placeholder so that tests/CMakeLists.txt configures on the safetensors branch; the real temp_dir lives on main.
#include "tests/util/temp_dir.h"

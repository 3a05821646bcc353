// Placeholder so that tests/CMakeLists.txt configures on the safetensors branch; the real fault_fs lives on main.
#pragma once

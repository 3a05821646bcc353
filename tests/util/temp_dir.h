// Placeholder so that tests/CMakeLists.txt configures on the safetensors branch; the real temp_dir lives on main.
#pragma once

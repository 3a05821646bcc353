// TokenId: the one definition of a vocabulary index, shared by the tokenizer and the model code.
#pragma once

#include <cstdint>

namespace es {

using TokenId = uint32_t;

}  // namespace es

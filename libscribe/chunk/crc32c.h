// CRC-32C (Castagnoli), the checksum every stored 4 KiB block carries. Uses the SSE4.2
// instruction when the CPU has it and a table otherwise; both give the same result.
#ifndef SCRIBE_CHUNK_CRC32C_H_
#define SCRIBE_CHUNK_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace scribe {

uint32_t Crc32c(const void* data, size_t length, uint32_t seed = 0);

}  // namespace scribe

#endif  // SCRIBE_CHUNK_CRC32C_H_

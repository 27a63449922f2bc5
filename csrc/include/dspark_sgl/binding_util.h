// Reading a launcher's arguments from the dict the Python wrappers build:
// device pointers as ints (0 = null), sizes as ints, scalars as floats.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "dspark_sgl/philox.cuh"

namespace dspark_sgl {
namespace binding {

namespace py = pybind11;

inline py::handle item(const py::dict& d, const char* key) {
  if (!d.contains(key)) throw std::invalid_argument(std::string("missing kernel argument '") + key + "'");
  return d[key];
}

template <typename T = void>
inline T* ptr(const py::dict& d, const char* key) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(item(d, key).cast<uint64_t>()));
}

inline int64_t integer(const py::dict& d, const char* key) { return item(d, key).cast<int64_t>(); }

inline double real(const py::dict& d, const char* key) { return item(d, key).cast<double>(); }

// seed / offset: Python ints (value) or device int64 scalars (pointer).
inline PhiloxArgs philox(const py::dict& d) {
  return PhiloxArgs{item(d, "seed_value").cast<uint64_t>(), ptr<const int64_t>(d, "seed_ptr"),
                    item(d, "offset_value").cast<uint64_t>(), ptr<const int64_t>(d, "offset_ptr")};
}

inline void check(const std::string& op, const std::string& err) {
  if (!err.empty()) throw std::runtime_error("dspark_sgl._C." + op + ": " + err);
}

}  // namespace binding
}  // namespace dspark_sgl

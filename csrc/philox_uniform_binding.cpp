// Python binding of philox_uniform (see philox_uniform.cu).
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "dspark_sgl/launch.h"

namespace py = pybind11;

namespace dspark_sgl {

void bind_philox_uniform(py::module_& m) {
  m.def(
      "philox_uniform",
      [](uintptr_t out, uintptr_t rows, uintptr_t positions, int64_t batch, int64_t vocab_size,
         uint64_t seed_value, uintptr_t seed_ptr, uint64_t offset_value, uintptr_t offset_ptr,
         uint32_t stream, uintptr_t cuda_stream) {
        const std::string err = launch_philox_uniform(
            reinterpret_cast<float*>(out), reinterpret_cast<const int64_t*>(rows),
            reinterpret_cast<const int64_t*>(positions), batch, vocab_size, seed_value,
            reinterpret_cast<const int64_t*>(seed_ptr), offset_value,
            reinterpret_cast<const int64_t*>(offset_ptr), stream, cuda_stream);
        if (!err.empty()) throw std::runtime_error("dspark_sgl._C.philox_uniform: " + err);
      },
      py::arg("out"), py::arg("rows"), py::arg("positions"), py::arg("batch"),
      py::arg("vocab_size"), py::arg("seed_value"), py::arg("seed_ptr"), py::arg("offset_value"),
      py::arg("offset_ptr"), py::arg("stream"), py::arg("cuda_stream"),
      "Fill out[batch, vocab_size] (float32, device) with dspark_sgl.rng uniforms.");
}

}  // namespace dspark_sgl

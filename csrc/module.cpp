// dspark_sgl._C: the pybind11 module collecting every kernel's binding.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace dspark_sgl {
void bind_philox_uniform(py::module_& m);
void bind_markov_block(py::module_& m);
void bind_chain_verify(py::module_& m);
void bind_schedule_prefix(py::module_& m);
}  // namespace dspark_sgl

PYBIND11_MODULE(_C, m) {
  m.doc() = "dspark_sgl CUDA kernels (raw-pointer launchers; use the dspark_sgl Python API)";
  m.attr("cuda_archs") = DSPARK_SGL_CUDA_ARCHS;  // SASS targets, e.g. "90a,90"
#ifdef DSPARK_SGL_CUDA_PTX
  m.attr("cuda_ptx") = DSPARK_SGL_CUDA_PTX;  // embedded PTX target ("" for none)
#else
  m.attr("cuda_ptx") = "";
#endif
  dspark_sgl::bind_philox_uniform(m);
  dspark_sgl::bind_markov_block(m);
  dspark_sgl::bind_chain_verify(m);
  dspark_sgl::bind_schedule_prefix(m);
}

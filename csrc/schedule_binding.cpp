// Python binding of schedule_prefix (see schedule.cu): schedule_prefix(args: dict).
#include <pybind11/pybind11.h>

#include "dspark_sgl/binding_util.h"
#include "dspark_sgl/launch.h"

namespace py = pybind11;

namespace dspark_sgl {

void bind_schedule_prefix(py::module_& m) {
  m.def(
      "schedule_prefix",
      [](const py::dict& d) {
        using namespace binding;
        SchedulePrefixArgs a{};
        a.rows = static_cast<int>(integer(d, "rows"));
        a.gamma = static_cast<int>(integer(d, "gamma"));
        a.sps_tokens = ptr<const double>(d, "sps_tokens");
        a.sps_speeds = ptr<const double>(d, "sps_speeds");
        a.sps_points = static_cast<int>(integer(d, "sps_points"));
        a.causal = static_cast<int>(integer(d, "causal"));
        a.budget_source = static_cast<int>(integer(d, "budget_source"));
        a.budget_ptr = ptr<const int64_t>(d, "budget_ptr");
        a.budget_value = integer(d, "budget_value");
        a.lengths = ptr<int32_t>(d, "lengths");
        a.take_out = ptr<int64_t>(d, "take_out");
        check("schedule_prefix",
              launch_schedule_prefix(a, ptr<const void>(d, "confidence"),
                                     ptr<const void>(d, "budget_confidence"),
                                     static_cast<int>(integer(d, "dtype")),
                                     static_cast<uintptr_t>(integer(d, "cuda_stream"))));
      },
      py::arg("args"), "Confidence-scheduled verify lengths in one launch (see dspark_sgl.scheduler).");
  m.attr("schedule_prefix_max_candidates") = kScheduleMaxCandidates;
  m.def("schedule_prefix_smem_bytes", &schedule_prefix_smem_bytes, py::arg("rows"), py::arg("gamma"),
        py::arg("two_segments"), "Shared memory of the one-CTA scheduling kernel.");
}

}  // namespace dspark_sgl

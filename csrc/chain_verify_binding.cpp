// Python binding of chain_verify (see chain_verify.cu): chain_verify(args: dict).
#include <pybind11/pybind11.h>

#include "dspark_sgl/binding_util.h"
#include "dspark_sgl/launch.h"

namespace py = pybind11;

namespace dspark_sgl {

void bind_chain_verify(py::module_& m) {
  m.def(
      "chain_verify",
      [](const py::dict& d) {
        using namespace binding;
        ChainVerifyArgs a{};
        a.target_logits = ptr<const void>(d, "target_logits");
        a.draft_logits = ptr<const void>(d, "draft_logits");
        a.draft_max = ptr<const float>(d, "draft_max");
        a.draft_sum = ptr<const float>(d, "draft_sum");
        a.draft_token_logits = ptr<const float>(d, "draft_token_logits");
        a.base_logits = ptr<const void>(d, "base_logits");
        a.anchor = ptr<const int64_t>(d, "anchor");
        a.w1 = ptr<const void>(d, "w1");
        a.w2 = ptr<const void>(d, "w2");
        a.rank = integer(d, "rank");
        a.softcap = static_cast<float>(real(d, "softcap"));
        a.logits_dtype = static_cast<int>(integer(d, "logits_dtype"));
        a.draft_tokens = ptr<const int64_t>(d, "draft_tokens");
        a.verify_lens = ptr<const int64_t>(d, "verify_lens");
        a.temperature = ptr<const float>(d, "temperature");
        a.rows = integer(d, "rows");
        a.gamma = integer(d, "gamma");
        a.vocab = integer(d, "vocab");
        a.philox = philox(d);
        a.stat_chunks = static_cast<int>(integer(d, "stat_chunks"));
        a.counters = ptr<int32_t>(d, "counters");
        a.accept_lens = ptr<int32_t>(d, "accept_lens");
        a.out_tokens = ptr<int64_t>(d, "out_tokens");
        check("chain_verify",
              launch_chain_verify(a, static_cast<int>(integer(d, "target_dtype")),
                                  static_cast<int>(integer(d, "draft_dtype")),
                                  static_cast<int>(integer(d, "weight_dtype")),
                                  ptr<void>(d, "workspace"),
                                  static_cast<uintptr_t>(integer(d, "cuda_stream"))));
      },
      py::arg("args"), "Verify drafted chains (see dspark_sgl.verify).");
  m.def("chain_verify_workspace_bytes", &chain_verify_workspace_bytes, py::arg("rows"),
        py::arg("gamma"), py::arg("vocab"), py::arg("stat_chunks"), py::arg("weight_bytes"),
        "Bytes of scratch chain_verify needs.");
  m.def("chain_verify_counter_bytes", &chain_verify_counter_bytes,
        "Bytes of int32 counters chain_verify needs (zero before the first launch, left zero by every launch).");
}

}  // namespace dspark_sgl

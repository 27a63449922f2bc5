// Python binding of markov_block (see markov_block.cu): markov_block(args: dict).
#include <pybind11/pybind11.h>

#include "dspark_sgl/binding_util.h"
#include "dspark_sgl/launch.h"

namespace py = pybind11;

namespace dspark_sgl {

void bind_markov_block(py::module_& m) {
  m.def(
      "markov_block",
      [](const py::dict& d) {
        using namespace binding;
        MarkovBlockArgs a{};
        a.base_logits = ptr<const void>(d, "base_logits");
        a.anchor = ptr<const int64_t>(d, "anchor");
        a.w1 = ptr<const void>(d, "w1");
        a.w2 = ptr<const void>(d, "w2");
        a.w2_scale = ptr<const float>(d, "w2_scale");
        a.temperature = ptr<const float>(d, "temperature");
        a.rows = integer(d, "rows");
        a.gamma = integer(d, "gamma");
        a.vocab = integer(d, "vocab");
        a.rank = integer(d, "rank");
        a.vocab_start = integer(d, "vocab_start");
        a.vocab_total = integer(d, "vocab_total");
        a.first_position = integer(d, "first_position");
        a.softcap = static_cast<float>(real(d, "softcap"));
        a.philox = philox(d);
        a.hidden = ptr<const void>(d, "hidden");
        a.hidden_size = integer(d, "hidden_size");
        a.conf_weight = ptr<const float>(d, "conf_weight");
        a.conf_uses_markov = static_cast<int>(integer(d, "conf_uses_markov"));
        a.conf_bias = ptr<const float>(d, "conf_bias");
        a.conf_bias_value = static_cast<float>(real(d, "conf_bias_value"));
        a.conf_dtype = static_cast<int>(integer(d, "conf_dtype"));
        a.sts_temperatures = ptr<const float>(d, "sts_temperatures");
        a.tokens = ptr<int64_t>(d, "tokens");
        a.token_logits = ptr<float>(d, "token_logits");
        a.token_scores = ptr<float>(d, "token_scores");
        a.stat_max = ptr<float>(d, "stat_max");
        a.stat_sum = ptr<float>(d, "stat_sum");
        a.logits_out = ptr<void>(d, "logits_out");
        a.logits_dtype = static_cast<int>(integer(d, "logits_dtype"));
        a.conf_logits = ptr<float>(d, "conf_logits");
        a.confidence = ptr<float>(d, "confidence");
        a.persistent = static_cast<int>(integer(d, "persistent"));
        check("markov_block",
              launch_markov_block(a, static_cast<int>(integer(d, "base_dtype")),
                                  static_cast<int>(integer(d, "weight_dtype")),
                                  static_cast<int>(integer(d, "hidden_dtype")),
                                  ptr<void>(d, "workspace"),
                                  static_cast<uintptr_t>(integer(d, "cuda_stream"))));
      },
      py::arg("args"), "Draft a block with the vanilla Markov head (see dspark_sgl.markov).");
  m.def("markov_block_workspace_bytes", &markov_block_workspace_bytes, py::arg("rows"),
        py::arg("vocab"), py::arg("weight_bytes"),
        "Bytes of scratch markov_block needs for one block.");
  m.def("markov_block_smem_bytes", &markov_block_smem_bytes, py::arg("rows"), py::arg("rank"),
        py::arg("weight_bytes"), "Shared memory per CTA of the Markov tile kernels.");
}

}  // namespace dspark_sgl

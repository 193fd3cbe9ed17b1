// Stage construction and batch validation.
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "ops/stage.hpp"

#include <doctest/doctest.h>

#include <stdexcept>
#include <string>
#include <vector>

using namespace tern;
using namespace tern::ops;

namespace {

const std::string kTinyF32 = std::string(TERN_TEST_DATA) + "/tiny-bitnet/model-f32.gguf";

// Expects forward() to throw std::invalid_argument whose message contains `part`.
void expectReject(Stage& s, const BatchIn& in, const std::string& part) {
  BatchOut out;
  try {
    s.forward(in, out);
    FAIL("batch accepted, expected an error containing '", part, "'");
  } catch (const std::invalid_argument& e) {
    CHECK_MESSAGE(std::string(e.what()).find(part) != std::string::npos, e.what());
  }
}

}  // namespace

TEST_CASE("stage: bad ranges are rejected") {
  auto file = gguf::File::open(kTinyF32);
  const ModelConfig cfg = ModelConfig::fromGguf(*file);
  CHECK_THROWS_AS(Stage(file, cfg, {0, 3, true, true}, {}), std::invalid_argument);
  CHECK_THROWS_AS(Stage(file, cfg, {2, 1, true, true}, {}), std::invalid_argument);
  CHECK_THROWS_AS(Stage(file, cfg, {1, 1, false, false}, {}), std::invalid_argument);
  StageOptions badKernels;
  badKernels.kernels = "nope";
  CHECK_THROWS_AS(Stage(file, cfg, {0, 2, true, true}, badKernels), std::invalid_argument);
  StageOptions badThreads;
  badThreads.threads = -1;
  CHECK_THROWS_AS(Stage(file, cfg, {0, 2, true, true}, badThreads), std::invalid_argument);

  Stage whole(file, cfg, {0, 2, true, true}, {});
  CHECK(whole.config().nLayer == 2);
  // 2 layers x (K + V) x kvDim 128 x 2 bytes (F16)
  CHECK(whole.kvBytesPerToken() == 2u * 2 * 128 * 2);
  Stage embedOnly(file, cfg, {0, 0, true, false}, {});
  CHECK(embedOnly.kvBytesPerToken() == 0);
  CHECK(embedOnly.weightBytes() == 256u * 4);  // one F32 embedding row per token
  CHECK(whole.weightBytes() > embedOnly.weightBytes());
}

TEST_CASE("stage: sequences and invalid batches") {
  auto file = gguf::File::open(kTinyF32);
  const ModelConfig cfg = ModelConfig::fromGguf(*file);
  Stage s(file, cfg, {0, 2, true, true}, {});
  CHECK_THROWS_AS(s.openSequence(1, 0), std::invalid_argument);
  s.openSequence(1, 4);
  CHECK(s.hasSequence(1));
  CHECK_THROWS_AS(s.openSequence(1, 4), std::invalid_argument);
  CHECK_THROWS_AS(s.closeSequence(9), std::invalid_argument);

  const std::vector<uint64_t> seq1 = {1}, seq9 = {9}, seq11 = {1, 1};
  const std::vector<uint32_t> pos0 = {0}, pos1 = {1}, pos00 = {0, 0}, pos01 = {0, 1};
  const std::vector<int32_t> tok = {5}, tok2 = {5, 6}, tokBig = {512}, tokNeg = {-1};
  const std::vector<uint8_t> want = {1}, want2 = {0, 1};
  expectReject(s, {seq9, pos0, tok, {}, want}, "unknown sequence 9");
  expectReject(s, {seq1, pos1, tok, {}, want}, "expects position 0, got 1");
  expectReject(s, {seq11, pos00, tok2, {}, want2}, "expects position 1, got 0");
  expectReject(s, {seq1, pos0, tokBig, {}, want}, "id 512 is out of range");
  expectReject(s, {seq1, pos0, tokNeg, {}, want}, "id -1 is out of range");
  expectReject(s, {seq1, pos0, {}, {}, want}, "tokens has 0 entries");
  expectReject(s, {seq11, pos0, tok2, {}, want2}, "pos has 1 entries");
  expectReject(s, {seq1, pos0, tok, {}, want2}, "wantLogits has 2 entries");

  // A valid batch goes through and advances the sequence; nothing changed on the errors above.
  BatchOut out;
  s.forward({seq11, pos01, tok2, {}, want2}, out);
  CHECK(out.logits.size() == cfg.nVocab);
  const std::vector<uint32_t> pos2 = {2}, pos3 = {3}, pos4 = {4};
  s.forward({seq1, pos2, tok, {}, want}, out);
  s.forward({seq1, pos3, tok, {}, want}, out);
  expectReject(s, {seq1, pos4, tok, {}, want}, "beyond the context size 4");
  s.closeSequence(1);
  CHECK(!s.hasSequence(1));

  // A non-embed stage takes activations of n x nEmbd floats.
  Stage tail(file, cfg, {1, 2, false, true}, {});
  tail.openSequence(7, 8);
  const std::vector<float> act(cfg.nEmbd - 1, 0.0f);
  const std::vector<uint64_t> seq7 = {7};
  expectReject(tail, {seq7, pos0, {}, act, want}, "act has 255 floats");
  const std::vector<float> actOk(cfg.nEmbd, 0.5f);
  tail.forward({seq7, pos0, {}, actOk, want}, out);
  CHECK(out.logits.size() == cfg.nVocab);
  CHECK(out.act.empty());
}

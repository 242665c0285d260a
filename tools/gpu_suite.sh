#!/usr/bin/env bash
# The GPU checks and benchmarks, in stages, for a machine with a CUDA GPU and no Bazel
# (the device tool's machines): each stage logs to $OUT/<stage>.log and a summary line.
#
#   OUT=/tmp/gpu tools/gpu_suite.sh info kernel-tests engine-tests smollm2-tests bench-kernels profile \
#       throughput-b1 throughput-64 throughput-1000 serving verify verify-smollm2 vl
#
# Commands run from the repository root with PYTHONPATH=max/python:max/kernels/python.
# `serve` needs packages the device image lacks (starlette, uvicorn, pydantic 2.14.4 with
# pydantic_core 2.50.5, annotated-types, typing-inspection, typing_extensions >= 4.16): carry
# them as wheels and install them into a folder on PYTHONPATH first. STEP_STATS=1 makes the
# serving stages record every engine step (`serve --step-stats-dir`) into $OUT/steps/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-/tmp/gpu_suite}"
mkdir -p "$OUT"
export PYTHONPATH="max/python:max/kernels/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export MAX_CACHE_DIR="${MAX_CACHE_DIR:-/tmp/max-cache}"
CONFIGS=max/python/max/benchmark/configs
PY=python3

stage() {  # stage NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "=== $name: $*" >>"$OUT/$name.log"
  timeout "$limit" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  echo "[$name] rc=$rc $((SECONDS - start)) s: $*" | tee -a "$OUT/summary.txt"
  return 0
}

throughput() {  # throughput LABEL MODEL ARGS...
  local label=$1 model=$2
  shift 2
  stage "throughput-$label" 600 $PY -m max.benchmark.benchmark_throughput --model-path "$CONFIGS/$model" \
    --load-format dummy --devices gpu --disable-tqdm --result-file "$OUT/throughput-$label.json" "$@"
}

for s in "$@"; do
  case "$s" in
    info)
      stage info 60 nvidia-smi
      stage info 120 $PY -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())"
      ;;
    kernel-tests)
      stage kernel-tests "${KERNEL_TESTS_LIMIT:-270}" $PY -m pytest -q -n 8 -p no:cacheprovider max/kernels/python/max_kernels/attention_gpu_test.py \
        max/kernels/python/max_kernels/fused_ops_gpu_test.py max/kernels/python/max_kernels/sampling_moe_gpu_test.py
      ;;
    attention-tests)
      stage attention-tests "${KERNEL_TESTS_LIMIT:-270}" $PY -m pytest -q -n 8 -p no:cacheprovider max/kernels/python/max_kernels/attention_gpu_test.py
      ;;
    engine-tests)
      stage engine-tests "${ENGINE_TESTS_LIMIT:-150}" $PY -m pytest -q -p no:cacheprovider max/python/max/pipelines/lib/engine/gpu_engine_test.py
      ;;
    smollm2-tests)
      stage smollm2-tests 600 $PY -m pytest -q -p no:cacheprovider max/python/max/pipelines/architectures/llama3/llama3_gpu_test.py
      ;;
    bench-kernels)
      stage bench-kernels "${BENCH_LIMIT:-120}" $PY -m max.benchmark.kernels.bench ${BENCH_FILTER:+--filter $BENCH_FILTER} --result-file "$OUT/bench-kernels.json"
      ;;
    profile)
      for model in SmolLM2-135M Llama-3.1-8B; do
        for mode in "torch-eager-sync --kernels torch --enforce-eager --no-async-scheduling" \
                    "triton-eager-sync --enforce-eager --no-async-scheduling" \
                    "triton-graphs-sync --no-async-scheduling" \
                    "triton-graphs-async"; do
          set -- $mode
          label=$1
          shift
          stage profile 300 $PY -m max.benchmark.profile_step --model-path "$CONFIGS/$model" --load-format dummy \
            --devices gpu --quantization-encoding bfloat16 --max-length 4096 --batch-size 1 --steps 50 --label "$model $label" "$@"
        done
      done
      ;;
    throughput-b1)  # batch-1 decode, ours beside transformers
      throughput llama8b-b1 Llama-3.1-8B --num-prompts 1 --random-input-len 200 --random-output-len 256 --max-length 4096 --backend both
      throughput smollm2-b1 SmolLM2-135M --num-prompts 1 --random-input-len 200 --random-output-len 512 --max-length 4096 --backend both
      ;;
    throughput-64)
      throughput llama8b-64 Llama-3.1-8B --num-prompts 64 --random-input-len 200 --random-output-len 180 --max-length 4096 --max-batch-size 64 --backend both
      ;;
    throughput-1000)  # 1000 requests at once; transformers runs 256 of them as one padded batch
      throughput llama8b-1000 Llama-3.1-8B --num-prompts 1000 --random-input-len 200 --random-output-len 180 --max-length 4096 --max-batch-size 256
      throughput llama8b-1000-b512 Llama-3.1-8B --num-prompts 1000 --random-input-len 200 --random-output-len 180 --max-length 4096 --max-batch-size 512
      throughput llama8b-hf256 Llama-3.1-8B --num-prompts 256 --random-input-len 200 --random-output-len 180 --max-length 4096 --backend hf --hf-batch-size 256
      ;;
    gpt-oss)  # gpt-oss-20b shape: batch-1 decode and the 1000-request workload
      throughput gptoss-b1 gpt-oss-20b --num-prompts 1 --random-input-len 200 --random-output-len 256 --max-length 4096
      throughput gptoss-1000 gpt-oss-20b --num-prompts 1000 --random-input-len 200 --random-output-len 180 --max-length 4096 --max-batch-size 256
      ;;
    real-sizes-tests)  # issue 25's GPU checks: packed MXFP4 experts, the FP8 KV cache
      stage real-sizes-tests 420 $PY -m pytest -q -p no:cacheprovider max/kernels/python/max_kernels/mxfp4_moe_gpu_test.py \
        max/kernels/python/max_kernels/attention_gpu_test.py max/python/max/pipelines/lib/engine/gpu_engine_test.py -k "mxfp4 or fp8"
      ;;
    mxfp4-bench)
      stage mxfp4-bench 300 $PY -m max.benchmark.kernels.mxfp4_moe_bench ${MXFP4_BENCH_ARGS:---paths --sweep}
      ;;
    real-sizes-b1)  # batch-1 decode of the three shapes (the start-up log has the memory report)
      throughput gptoss-b1 gpt-oss-20b --num-prompts 1 --random-input-len 200 --random-output-len 256 --max-length 4096
      throughput qwen3moe-b1 Qwen3-30B-A3B --num-prompts 1 --random-input-len 200 --random-output-len 256 --max-length 4096
      throughput llama8b-b1 Llama-3.1-8B --num-prompts 1 --random-input-len 200 --random-output-len 256 --max-length 4096
      ;;
    kv-fp8)  # the 1000-request workload with a bfloat16 and an FP8 KV cache
      throughput llama8b-1000 Llama-3.1-8B --num-prompts 1000 --random-input-len 200 --random-output-len 180 --max-length 4096 --max-batch-size 256
      throughput llama8b-1000-kvfp8 Llama-3.1-8B --num-prompts 1000 --random-input-len 200 --random-output-len 180 --max-length 4096 --max-batch-size 256 --kv-cache-dtype fp8
      ;;
    vl)  # Qwen2.5-VL: GPU parity with images (tiny checkpoint), then the 7B shape on 64 image+text requests
      stage vl-tests 300 $PY -m pytest -q -p no:cacheprovider max/python/max/pipelines/architectures/qwen2_5_vl/qwen2_5_vl_gpu_test.py \
        max/python/max/pipelines/lib/engine/gpu_engine_test.py -k qwen2_5_vl
      # 64 warm-up requests: the first batch of images compiles Triton kernels for new shapes.
      throughput vl7b-64 Qwen2.5-VL-7B --num-prompts 64 --random-input-len 100 --random-output-len 100 \
        --random-images-per-prompt 1 --random-image-size 448x448 --max-length 4096 --max-batch-size 64 --num-warmups 64
      throughput vl7b-64-text Qwen2.5-VL-7B --num-prompts 64 --random-input-len 358 --random-output-len 100 \
        --max-length 4096 --max-batch-size 64 --num-warmups 64
      ;;
    steps-1000)  # the 1000-request workload step by step (--step-stats), and its kernels (--profile-kernels)
      for b in ${STEPS_BATCH:-512}; do
        throughput "steps-b$b" Llama-3.1-8B --num-prompts 1000 --random-input-len 200 --random-output-len 180 --max-length 4096 \
          --max-batch-size "$b" --step-stats ${STEPS_ARGS:-}
      done
      ;;
    kernels-1000)
      throughput "kernels-b${KERNELS_BATCH:-512}" Llama-3.1-8B --num-prompts 1000 --random-input-len 200 --random-output-len 180 \
        --max-length 4096 --max-batch-size "${KERNELS_BATCH:-512}" --profile-kernels 25 ${STEPS_ARGS:-}
      ;;
    profile-b512)  # steady decode at batch 512: the kernels taking the step's GPU time
      stage profile-b512 300 $PY -m max.benchmark.profile_step --model-path "$CONFIGS/Llama-3.1-8B" --load-format dummy \
        --devices gpu --quantization-encoding bfloat16 --max-length 4096 --batch-size 512 --max-batch-size 512 --steps 30 \
        --top-kernels 20 --label "Llama-3.1-8B b512"
      ;;
    throughput-1024)  # 1000 requests, all in the running batch at once
      throughput llama8b-1000-b1024 Llama-3.1-8B --num-prompts 1000 --random-input-len 200 --random-output-len 180 --max-length 4096 --max-batch-size 1024
      ;;
    throughput-large)  # 1000 requests with a larger batch and prefill budget
      throughput llama8b-1000-b512-t16k Llama-3.1-8B --num-prompts 1000 --random-input-len 200 --random-output-len 180 --max-length 4096 --max-batch-size 512 --max-num-batched-tokens 16384
      throughput llama8b-1000-b1024-t16k Llama-3.1-8B --num-prompts 1000 --random-input-len 200 --random-output-len 180 --max-length 4096 --max-batch-size 1024 --max-num-batched-tokens 16384
      ;;
    serving-256)
      stage serving-256 600 $PY -m max.benchmark.benchmark_serving --model-path "$CONFIGS/Llama-3.1-8B" --load-format dummy \
        --devices gpu --max-length 4096 --max-batch-size 256 --max-num-batched-tokens 16384 --skip-tokenizer-init --dataset random \
        --random-input-len 200 --random-output-len 180 --num-prompts 1000 --max-concurrency 256 --disable-tqdm \
        --result-file "$OUT/serving-c256-t16k.json"
      ;;
    profile-8b)
      for mode in "triton-graphs-sync --no-async-scheduling" "triton-graphs-async"; do
        set -- $mode
        label=$1
        shift
        stage profile-8b 300 $PY -m max.benchmark.profile_step --model-path "$CONFIGS/Llama-3.1-8B" --load-format dummy \
          --devices gpu --quantization-encoding bfloat16 --max-length 4096 --batch-size 1 --steps 100 --label "Llama-3.1-8B $label" "$@"
      done
      ;;
    gemv-tests)  # the one-row GEMV, argmax, PDL chains in CUDA graphs; the fused kernels and attention, launched with PDL
      stage gemv-tests 300 $PY -m pytest -q -p no:cacheprovider max/kernels/python/max_kernels/gemv_gpu_test.py \
        max/kernels/python/max_kernels/argmax_gpu_test.py \
        max/kernels/python/max_kernels/fused_ops_gpu_test.py max/kernels/python/max_kernels/attention_gpu_test.py
      ;;
    gemv-bench)  # one-row products at the 8B's shapes: cuBLAS against the GEMV's configurations, with and without PDL
      stage gemv-bench 300 $PY -m max.benchmark.kernels.gemv_bench ${GEMV_BENCH_ARGS:-}
      ;;
    smollm2-b1)  # the host-bound small model at batch 1
      stage smollm2-b1 300 $PY -m max.benchmark.profile_step --model-path "$CONFIGS/SmolLM2-135M" --load-format dummy \
        --devices gpu --quantization-encoding bfloat16 --max-length 4096 --batch-size 1 --steps 300 --label "SmolLM2 b1"
      ;;
    pdl-1000)  # the 1000-request workload (max batch 512) with PDL off and on
      for p in 0 1; do
        MAX_PDL=$p throughput "llama8b-1000-b512-pdl$p" Llama-3.1-8B --num-prompts 1000 --random-input-len 200 \
          --random-output-len 180 --max-length 4096 --max-batch-size 512
      done
      ;;
    b1-ab)  # batch-1 decode of the 8B with the GEMV and PDL each off and on (MAX_GEMV, MAX_PDL), side by side
      for combo in ${B1_AB_COMBOS:-00 01 10 11}; do  # MAX_GEMV and MAX_PDL, one digit each
        g=${combo:0:1} p=${combo:1:1}
        stage b1-ab 300 env MAX_GEMV=$g MAX_PDL=$p $PY -m max.benchmark.profile_step --model-path "$CONFIGS/Llama-3.1-8B" \
          --load-format dummy --devices gpu --quantization-encoding bfloat16 --max-length 4096 --batch-size 1 --steps 300 \
          --top-kernels 14 --label "8B b1 gemv=$g pdl=$p"
      done
      ;;
    fp8-tests)  # FP8 products against their references; the engine with --quantization fp8
      stage fp8-tests 300 $PY -m pytest -q -p no:cacheprovider max/kernels/python/max_kernels/fp8_gpu_test.py \
        max/python/max/pipelines/lib/engine/gpu_engine_test.py -k "${FP8_TESTS_K:-fp8}"
      ;;
    fp8-bench)  # FP8 products at decode shapes: cuBLAS bfloat16, _scaled_mm, the Triton weight-only tiles
      stage fp8-bench 300 $PY -m max.benchmark.kernels.fp8_bench ${FP8_BENCH_ARGS:-}
      ;;
    fp8-b1)  # batch-1 decode of the 8B with --quantization fp8
      stage fp8-b1 300 $PY -m max.benchmark.profile_step --model-path "$CONFIGS/Llama-3.1-8B" --load-format dummy --devices gpu \
        --quantization-encoding bfloat16 --max-length 4096 --batch-size 1 --steps 300 --top-kernels 14 --label "8B b1 fp8" --quantization fp8
      ;;
    fp8)  # Llama-3.1-8B shape, bfloat16 beside --quantization fp8: batch-1 decode and the 1000-request workload
      for q in "" "--quantization fp8"; do
        label=$([ -n "$q" ] && echo fp8 || echo bf16)
        stage fp8 300 $PY -m max.benchmark.profile_step --model-path "$CONFIGS/Llama-3.1-8B" --load-format dummy --devices gpu \
          --quantization-encoding bfloat16 --max-length 4096 --batch-size 1 --steps 300 --top-kernels 14 --label "8B b1 $label" $q
        throughput "llama8b-1000-b512-$label" Llama-3.1-8B --num-prompts 1000 --random-input-len 200 --random-output-len 180 \
          --max-length 4096 --max-batch-size 512 $q
      done
      ;;
    int4-tests)  # the int4 GEMV / GEMM against the reference at the 8B shapes
      stage int4-tests 300 $PY -m pytest -q -p no:cacheprovider max/kernels/python/max_kernels/int4_gpu_test.py
      ;;
    int4-bench)  # int4 products at the 8B shapes: cuBLAS bfloat16 against the Triton tiles
      stage int4-bench 600 $PY -m max.benchmark.kernels.int4_bench ${INT4_BENCH_ARGS:-}
      ;;
    quantized)  # Llama-3.1-8B shape: bfloat16 beside pre-quantized layouts (config-only, dummy weights)
      for kind in gptq fp8 fp8-block; do
        $PY -m max.benchmark.quantized_configs --base Llama-3.1-8B --kind "$kind" --output "$OUT/configs/8B-$kind" >/dev/null
      done
      for model in "$CONFIGS/Llama-3.1-8B" "$OUT/configs/8B-gptq" "$OUT/configs/8B-fp8" "$OUT/configs/8B-fp8-block"; do
        label=$(basename "$model")
        stage quantized 300 $PY -m max.benchmark.profile_step --model-path "$model" --load-format dummy --devices gpu \
          --quantization-encoding bfloat16 --max-length 4096 --batch-size 1 --steps 300 --top-kernels 14 --label "8B b1 $label"
        stage quantized 600 $PY -m max.benchmark.benchmark_throughput --model-path "$model" --load-format dummy --devices gpu \
          --disable-tqdm --result-file "$OUT/throughput-1000-$label.json" --num-prompts 1000 --random-input-len 200 \
          --random-output-len 180 --max-length 4096 --max-batch-size 512
      done
      ;;
    serving-fp8)  # serve at concurrency 256: bfloat16 beside --quantization fp8
      for q in "" "--quantization fp8"; do
        label=$([ -n "$q" ] && echo fp8 || echo bf16)
        stage serving-fp8 300 $PY -m max.benchmark.benchmark_serving --model-path "$CONFIGS/Llama-3.1-8B" --load-format dummy \
          --devices gpu --max-length 4096 --max-batch-size 256 --skip-tokenizer-init --dataset random \
          --random-input-len 200 --random-output-len 180 --num-prompts 1000 --max-concurrency 256 --disable-tqdm \
          --result-file "$OUT/serving-c256-$label.json" $q
      done
      ;;
    profile-top)  # batch-1 decode of the 8B and SmolLM2: the kernels taking the GPU's time, and a trace
      for model in Llama-3.1-8B SmolLM2-135M; do
        stage profile-top 300 $PY -m max.benchmark.profile_step --model-path "$CONFIGS/$model" \
          --load-format dummy --devices gpu --quantization-encoding bfloat16 --max-length 4096 --batch-size 1 --steps 200 \
          --top-kernels 16 --trace "$OUT/trace-$model.json" --label "$model"
      done
      ;;
    verify-carried)  # tiny checkpoints carried into $MAX_CACHE_DIR/tiny-random (no SmolLM2 GGUF there)
      stage verify-carried 600 $PY max/tests/integration/accuracy/verify_pipelines.py --devices gpu \
        --pipeline tiny-random-llama3-float32 --pipeline tiny-random-llama3-bfloat16 \
        --pipeline tiny-random-qwen3-moe-float32 --pipeline tiny-random-qwen3-moe-bfloat16 \
        --pipeline tiny-random-gemma3-float32 --pipeline tiny-random-gemma3-bfloat16 --report "$OUT/verify-carried.md"
      ;;
    tp-tests)  # needs 2 GPUs
      stage tp-tests 300 $PY -m pytest -q -p no:cacheprovider max/python/max/pipelines/lib/runner/tensor_parallel_gpu_test.py
      ;;
    tp-debug)  # one architecture's TP=2 test, with NCCL's log (NCCL_DEBUG=INFO: transports chosen); if
      # it is still running after TP_DUMP_AFTER s, every Python process's stack (py-spy dump)
      # goes to $OUT/tp-debug-stacks.txt. TP_DEBUG_ENV adds variables (e.g. NCCL_P2P_DISABLE=1).
      # A collective that waits engine_step_timeout (300 s) fails with its name and sequence
      # number, and the NCCL flight recorder keeps the last collectives of each rank.
      env NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,P2P,NET TORCH_NCCL_TRACE_BUFFER_SIZE=2000 \
        TORCH_NCCL_DUMP_ON_TIMEOUT=1 TORCH_NCCL_DEBUG_INFO_TEMP_FILE="$OUT/nccl_trace_rank_" ${TP_DEBUG_ENV:-} $PY -m pytest -q -s -x -p no:cacheprovider -o faulthandler_timeout=80 \
        max/python/max/pipelines/lib/runner/tensor_parallel_gpu_test.py -k "${TP_DEBUG_K:-llama3}" >"$OUT/tp-debug.log" 2>&1 &
      tpid=$!
      for _ in $(seq "${TP_DUMP_AFTER:-90}"); do kill -0 $tpid 2>/dev/null || break; sleep 1; done
      if kill -0 $tpid 2>/dev/null; then
        for p in $(pgrep python3); do
          echo "=== $p $(tr '\0' ' ' </proc/$p/cmdline | cut -c1-200)" >>"$OUT/tp-debug-stacks.txt"
          timeout 20 "${PYSPY:-/tmp/site/bin/py-spy}" dump --pid $p >>"$OUT/tp-debug-stacks.txt" 2>&1
        done
        pkill -9 -f tensor_parallel_gpu_test; pkill -9 -f spawn_main
      fi
      wait $tpid
      echo "[tp-debug] rc=$?: $(tail -1 "$OUT/tp-debug.log")" | tee -a "$OUT/summary.txt"
      ;;
    tp-throughput)  # batch-1 decode with tensor parallelism over the GPUs the machine has
      n=$(python3 -c "import torch; print(torch.cuda.device_count())")
      throughput llama70b-tp$n-b1 Llama-3.1-70B --num-prompts 1 --random-input-len 200 --random-output-len 128 --max-length 4096 --tensor-parallel-size $n
      throughput llama8b-tp$n-b1 Llama-3.1-8B --num-prompts 1 --random-input-len 200 --random-output-len 256 --max-length 4096 --tensor-parallel-size $n
      throughput llama8b-tp1-b1 Llama-3.1-8B --num-prompts 1 --random-input-len 200 --random-output-len 256 --max-length 4096 --tensor-parallel-size 1
      ;;
    tp-1000)  # the 1000-request workload at the 70B shape with tensor parallelism over the GPUs the machine has
      n=$(python3 -c "import torch; print(torch.cuda.device_count())")
      throughput llama70b-tp$n-1000 Llama-3.1-70B --num-prompts 1000 --random-input-len 200 --random-output-len 180 --max-length 4096 \
        --max-batch-size 256 --tensor-parallel-size $n
      ;;
    serving)
      steps=()
      [ "${STEP_STATS:-0}" = 1 ] && steps=(--step-stats-dir "$OUT/steps")
      for c in ${SERVING_CONCURRENCY:-1 64 256}; do
        n=$((c == 1 ? 32 : (c == 64 ? 256 : 1000)))
        stage serving 600 $PY -m max.benchmark.benchmark_serving --model-path "$CONFIGS/Llama-3.1-8B" --load-format dummy \
          --devices gpu --max-length 4096 --max-batch-size 256 --skip-tokenizer-init --dataset random \
          --random-input-len 200 --random-output-len 180 --num-prompts $n --max-concurrency $c --disable-tqdm \
          --result-file "$OUT/serving-c$c.json" "${steps[@]}"
      done
      ;;
    dp-serving)  # data parallelism: one replica per GPU behind one endpoint, 256 concurrent requests per
      # replica, against one GPU with 256 (the same per-replica load)
      n=$(python3 -c "import torch; print(torch.cuda.device_count())")
      for dp in 1 $n; do
        stage dp-serving 300 $PY -m max.benchmark.benchmark_serving --model-path "$CONFIGS/Llama-3.1-8B" --load-format dummy \
          --devices "gpu:$(seq -s, 0 $((dp - 1)))" --data-parallel-size $dp --max-length 4096 --max-batch-size 256 \
          --skip-tokenizer-init --dataset random --random-input-len 200 --random-output-len 180 --num-prompts $((1000 * dp)) \
          --max-concurrency $((256 * dp)) --disable-tqdm --result-file "$OUT/dp-serving-dp$dp.json"
      done
      ;;
    serving-diag)  # serve at concurrency 256 (SERVING_CONCURRENCY), with the engine's step record, per-thread
      # CPU (top -H) and py-spy samples of the HTTP and engine processes (py-spy carried as a wheel;
      # tools/pyspy_summary.py reads them; tools/serve_timeline.py lines up the step record and the
      # requests)
      mkdir -p "$OUT/steps"
      port=8391 c=${SERVING_CONCURRENCY:-256}
      $PY -m max.entrypoints.pipelines serve --step-stats-dir "$OUT/steps" \
        --port $port --model-path "$CONFIGS/${DIAG_MODEL:-Llama-3.1-8B}" --load-format dummy --devices ${DIAG_DEVICES:-gpu} --max-length 4096 \
        --max-batch-size 256 --skip-tokenizer-init ${SERVE_ARGS:-} >"$OUT/serving-diag-server.log" 2>&1 &
      spid=$!
      for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
      $PY -m max.benchmark.benchmark_serving --base-url "http://127.0.0.1:$port" --model-path "$CONFIGS/${DIAG_MODEL:-Llama-3.1-8B}" \
        --dataset random --random-input-len 200 --random-output-len ${DIAG_OUTPUT_LEN:-180} --num-prompts ${DIAG_PROMPTS:-1000} --max-concurrency $c \
        --disable-tqdm --save-detailed --result-file "$OUT/serving-diag-c$c.json" >"$OUT/serving-diag.log" 2>&1 &
      bpid=$!
      # Sample once the measured run fills the batch (the client takes seconds to start).
      for _ in $(seq 240); do
        running=$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^vllm:num_requests_running/ {print int($2)}')
        [ "${running:-0}" -ge "${DIAG_RUNNING:-200}" ] && break
        sleep 0.25
      done
      pids="$spid,$bpid$(pgrep -P $spid | sed 's/^/,/' | tr -d '\n')"
      top -H -b -d 1 -n "${DIAG_SECONDS:-8}" -p "$pids" >"$OUT/serving-diag-top.txt" 2>&1 &
      for p in ${pids//,/ }; do
        "${PYSPY:-/tmp/site/bin/py-spy}" record --pid "$p" --duration "${DIAG_SECONDS:-8}" --rate 250 --format raw \
          --threads --idle --nonblocking -o "$OUT/pyspy-$p.txt" >>"$OUT/serving-diag-pyspy.log" 2>&1 &
      done
      wait $bpid
      echo "[serving-diag] pids $pids; benchmark rc=$?" | tee -a "$OUT/summary.txt"
      kill -INT $spid; wait
      tail -25 "$OUT/serving-diag.log" >>"$OUT/summary.txt"
      ;;
    verify)
      for kernels in auto torch; do
        stage verify 900 $PY max/tests/integration/accuracy/verify_pipelines.py --devices gpu --kernels $kernels \
          --pipeline tiny-random-llama3-float32 --pipeline tiny-random-llama3-bfloat16 \
          --pipeline tiny-random-qwen2-float32 --pipeline tiny-random-qwen3-float32 \
          --pipeline tiny-random-qwen3-moe-float32 --pipeline tiny-random-qwen3-moe-bfloat16 \
          --pipeline tiny-random-gemma3-float32 --pipeline tiny-random-gemma3-bfloat16 \
          --report "$OUT/verify-$kernels.md"
      done
      ;;
    verify-smollm2)  # needs the GGUF in $MAX_CACHE_DIR/models (98 MB: carry it in two halves,
      # in two calls close enough that the machine stays warm, and join them there)
      for kernels in auto torch; do
        stage verify-smollm2 600 $PY max/tests/integration/accuracy/verify_pipelines.py --devices gpu --kernels $kernels \
          --pipeline SmolLM2-135M-Instruct-float32 --pipeline SmolLM2-135M-Instruct-bfloat16 --report "$OUT/verify-smollm2-$kernels.md"
      done
      ;;
    lora-tests)  # LoRA kernels at the 8B's shapes, and the engine's graphs (base and LoRA) against the CPU
      stage lora-tests 420 $PY -m pytest -q -p no:cacheprovider max/kernels/python/max_kernels/lora_gpu_test.py \
        max/python/max/pipelines/lib/lora/lora_gpu_test.py
      ;;
    lora-kernels)  # the LoRA products against the base projections, 1 / 16 / 256 rows over 8 slots
      stage lora-kernels 300 $PY -m max.benchmark.kernels.lora_bench
      ;;
    lora-b1)  # batch-1 decode of the 8B with and without a rank-16 adapter: step time and top kernels
      for rank in 0 16; do
        stage lora-b1 300 $PY -m max.benchmark.profile_step --model-path "$CONFIGS/Llama-3.1-8B" --load-format dummy \
          --devices gpu --max-length 4096 --gpu-memory-utilization 0.45 --batch-size 1 --steps 200 --top-kernels 14 \
          --lora-rank $rank --lora-adapters 8 --label "rank-$rank"
      done
      ;;
    lora-bench)  # issue 28's figures: 1000 requests over 8 adapters and batch-1 decode, against the base engine
      stage lora-bench 600 $PY -m max.benchmark.benchmark_lora --model-path "$CONFIGS/Llama-3.1-8B" --load-format dummy \
        --devices gpu --num-prompts 1000 --input-len 200 --output-len 180 --num-adapters 8 --lora-rank 16 \
        --max-batch-size 256 --max-length 4096 --gpu-memory-utilization 0.45 --result-file "$OUT/lora-bench.json"
      ;;
    *) echo "unknown stage $s" | tee -a "$OUT/summary.txt" ;;
  esac
done
cat "$OUT/summary.txt"

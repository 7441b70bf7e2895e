#!/usr/bin/env bash
# Re-executes chapters on a lent GPU machine (no network, no venv: its python3 has torch) and
# packs what it made into $OUT, one call per few chapters:
#
#   tools/outputs_device.sh --next                  # the next entries of the plan
#   tools/outputs_device.sh --detach [--wait 540]   # the whole plan in the background
#   tools/outputs_device.sh [--budget S] 06_vae_mnist t4:09_ddpm_mnist ...
#   tools/outputs_device.sh --dry-run [ENTRY...]    # here, on the CPU (see below)
#   tools/outputs_device.sh --lease                 # one lease's one call (issue 81)
#
# --weights [--jobs N] [CHAPTER...]: the shipped set (issue 92) trained on the GPU: the
# chapters (default: the pages furthest from their bars first, then the rest) run through
# tools/weights.py --missing in the cpu profile, N queues at once (default 4; they share the
# cache, whose locks make a model two chapters want train once), each stopped at the call's
# deadline; the set lives in $BOOK_CACHE/weights between calls (started from the working
# tree's companion/weights), and each call packs it into $OUT as weights.tar.part-aa, -ab,
# ... (at most 15 MiB each): unpack here with
#   cat weights.tar.part-* | tar xf - -C companion/weights
#
# --lease: what one lease (15 minutes of device time, one call of 10) is for. First the
# DDPM step benchmark (benchmarks.run --only ddpm --step, at most $BENCH_S s, into
# $OUT/bench.json), then the chapters `gpu_plan.py lease` fits into the call's budget,
# weakest samples first (18, 17, 13, 11, then the newest others), each stopped at the
# call's deadline. As each ends (done or stopped) $OUT gets the notebooks made so far
# (outputs.tar.gz), the train log, and checkpoints.tar: the lease's checkpoints that fit
# its 15 MiB (what a device call brings back is at most 16 MiB a file; a gpu U-Net's
# checkpoint is far larger), the others named in the log. A call cut off by its limit
# still returns what finished.
#
# The plan (tools/gpu_plan.py: the chapters in dependency order, 11 and 12 first, the
# T4-emulated runs of 9 and 10, then the rest) is followed by --next: each call runs the
# entries not yet in the lease's done.txt while their stored time estimates fit --budget,
# so the same command, repeated at once after each call, runs the whole book. --detach
# starts the whole plan in a process of its own session, which outlives the call, and
# each call (the same command again) waits up to --wait seconds and packs what is done:
# the GPU never waits for the next call, and a chapter may take longer than one call.
# An entry "t4:NAME" runs a copy of NAME under the T4 emulation (BOOK_T4=1, its own cache
# .cache/book-t4) and stores only its peak memory and time in the notebook (book.t4).
#
# - Wheels carried in .whl/ (tools/device_wheels.sh: what the machine lacks, nbclient,
#   ipykernel, mlxtend, ...) are installed into /tmp/site first, and checked
#   (gpu_plan.py check-env).
# - One checkpoint cache, .cache/book-gpu, is kept between the calls of one lease, so a
#   later call's chapter 10 loads what an earlier call's chapters 6, 7 and 9 trained; it
#   lives on the machine, which goes back 30 s after a call: call again at once.
# - Each notebook runs through run_notebooks.py (timed, stored in place, progress bars
#   off, torch's peak GPU memory recorded). A call starts no entry once --budget seconds
#   (540) have passed or when its estimate would not fit what is left (the first always
#   starts), and stops one still running at --deadline (570 s) so that it can pack; the
#   stopped entry's training resumes from its checkpoints in the next call.
# - $OUT/outputs.tar.gz holds every notebook made so far in this lease (kept outside the
#   working tree, which each call copies anew) and the results files (into
#   .cache/book-gpu/results): unpack the latest in the repository root here, where it
#   replaces notebooks/NN_*.ipynb. $OUT/log.txt is the whole log. --skip "KEY..." marks
#   entries as done (made by a lease whose machine went back, and unpacked here).
#
# --dry-run: the same sequence here with BOOK_SMOKE=1 BOOK_PROFILE=gpu (the gpu profile's
# code, a couple of steps each), every notebook run as a copy in a temporary folder, a
# temporary cache and done.txt, calls simulated until the plan is done; nothing is stored.
set -uo pipefail
cd "$(dirname "$0")/.."
here=tools
budget=540 deadline= wait_s=540 mode=list dry=0 skip= jobs=4
entries=()
while [ $# -gt 0 ]; do
  case $1 in
    --budget) budget=$2; shift 2 ;;
    --deadline) deadline=$2; shift 2 ;;
    --wait) wait_s=$2; shift 2 ;;
    --next) mode=next; shift ;;
    --detach) mode=detach; shift ;;
    --runner) mode=runner; shift ;;  # the detached process itself
    --dry-run) dry=1; shift ;;
    --lease) mode=lease; shift ;;
    --weights) mode=weights; shift ;;
    --jobs) jobs=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) entries+=("$1"); shift ;;
  esac
done
start=$SECONDS
# on the device, stop an entry in time to pack; a dry run's CPU times are not the GPU's
[ -n "$deadline" ] || deadline=$( [ $dry = 1 ] && echo 86400 || echo 570 )

if [ $dry = 1 ]; then
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  export BOOK_SMOKE=1 BOOK_PROFILE=gpu BOOK_OFFLINE=1 BOOK_PROGRESS=0
  export BOOK_CACHE=${BOOK_CACHE:-$(mktemp -d /tmp/book-dry-run-cache-XXXXXX)}
  OUT=${OUT:-$(mktemp -d /tmp/book-dry-run-out-XXXXXX)}
else
  PY=${PYTHON:-python3}
  export BOOK_PROFILE=${BOOK_PROFILE:-gpu} BOOK_OFFLINE=1 BOOK_PROGRESS=0
  export BOOK_CACHE=${BOOK_CACHE:-$PWD/.cache/book-gpu}
  OUT=${OUT:-/tmp/out}
fi
T4_CACHE=${BOOK_T4_CACHE:-${BOOK_CACHE%/}-t4}
# every training run's start and end (companion.run.progress.log_training): a call whose
# notebook is still running comes back with what it trained and how long each run took
export BOOK_TRAIN_LOG=$BOOK_CACHE/train-log.txt
PACK=$BOOK_CACHE/pack  # the latest snapshot; each call copies it to $OUT
# what this lease made: the working tree, notebooks/ included, is copied anew at every
# call, so executed notebooks are kept here (run_notebooks.py --into)
MADE=$BOOK_CACHE/made
mkdir -p "$OUT" "$BOOK_CACHE" "$T4_CACHE" "$PACK" "$MADE"
touch "$BOOK_CACHE/done.txt" "$BOOK_CACHE/started.txt" "$BOOK_CACHE/failed.txt"
# entries done by an earlier lease (a machine that went back takes its cache along)
for key in $skip; do echo "$key" >> "$BOOK_CACHE/done.txt"; done
if [ $mode != runner ]; then exec > >(tee -a "$OUT/log.txt") 2>&1; fi

# the wheels, where this python3 lacks what they hold (the device's; not a venv here)
if [ $dry = 0 ] && compgen -G ".whl/*.whl" >/dev/null &&
    { [ -f /tmp/site/.installed ] || ! "$PY" -c "import nbclient, ipykernel, mlxtend" 2>/dev/null; }; then
  # on the path before check-env looks: without it every carried package reads as missing
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
  if [ ! -f /tmp/site/.installed ]; then  # once per machine: the next calls find it there
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    "$PY" $here/gpu_plan.py check-env || exit 1
    touch /tmp/site/.installed
  fi
fi
if [ $mode != runner ]; then
  "$PY" -c "import torch, nbclient, ipykernel, mlxtend, companion
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')" || exit 1
fi

# The notebooks this lease made ($MADE/notebooks), packed with the results files; written
# to a temporary name and renamed, so a call copying it never reads half a file.
snapshot() {
  [ $dry = 1 ] && return 0  # nothing of a dry run is stored or packed
  local nbs=() res=()
  # the notebooks and the arrays their pages' explorers run (page_explorers.store_*)
  [ -d "$MADE/notebooks" ] && nbs=(-C "$MADE" $(cd "$MADE" && ls notebooks/*.ipynb notebooks/explorers/*.npz 2>/dev/null | grep -v '\.running\.ipynb$'))
  [ -d "$BOOK_CACHE/results" ] && res=(-C "$BOOK_CACHE" --transform
                                       's,^results,.cache/book-gpu/results,' results)
  [ ${#nbs[@]} -gt 2 ] || [ ${#res[@]} -gt 0 ] || return 0
  tar czf "$PACK/outputs.tar.gz.tmp" "${nbs[@]}" "${res[@]}" &&
    mv "$PACK/outputs.tar.gz.tmp" "$PACK/outputs.tar.gz"
}

# run_entry KEY [SECONDS]: one chapter, or with KEY t4:NAME its T4-emulated copy; stopped
# after SECONDS when given. 0 when done (recorded in done.txt).
run_entry() {
  local key=$1 limit=${2:-} name nb rc cmd
  name=${key#t4:}; name=${name%.ipynb}; nb=notebooks/$name.ipynb
  if [ ! -f "$nb" ]; then
    echo "no notebook $nb (entry $key)"; echo "$key" >> "$BOOK_CACHE/failed.txt"; return 1
  fi
  echo "$key" >> "$BOOK_CACHE/started.txt"
  local es=$here/run_notebooks.py
  if [[ $key == t4:* ]]; then
    if [ $dry = 1 ]; then cmd=(env BOOK_T4=1 BOOK_CACHE="$T4_CACHE" "$PY" $es execute --copy "$nb")
    else cmd=(env BOOK_CACHE="$T4_CACHE" "$PY" $es t4 --into "$MADE" "$nb"); fi
  elif [ $dry = 1 ]; then cmd=("$PY" $es execute --copy "$nb")
  else cmd=("$PY" $es execute --into "$MADE" "$nb"); fi
  echo "=== $key ($(date -u +%H:%M:%S), $((SECONDS - start)) s into this call)"
  if [ -n "$limit" ]; then
    # run_notebooks.py stops the run at the deadline, its kernel first (which runs in a
    # session of its own: a signal to this process group would leave it running);
    # timeout is the net under that
    BOOK_RUN_DEADLINE=$(( $(date +%s) + limit )) \
      timeout --kill-after=15 $((limit + 60)) "${cmd[@]}"
  else
    "${cmd[@]}"
  fi
  rc=$?
  if [ $rc = 0 ]; then
    echo "$key" >> "$BOOK_CACHE/done.txt"
    snapshot
    return 0
  fi
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    echo "STOPPED: $key at the call's deadline; the next call runs it again (its training"
    echo "resumes from the checkpoints it saved)"
  else
    echo "FAILED: $key (exit code $rc)"
    echo "$key" >> "$BOOK_CACHE/failed.txt"
    # a failed chapter's run is not kept (jupyter execute stores nothing; the log has the
    # traceback); a failed T4 run stored its record (out of memory, say): pack it
    if [[ $key == t4:* ]] && [ $dry = 0 ]; then echo "$key" >> "$BOOK_CACHE/done.txt"; snapshot; fi
  fi
  return $rc
}

# the next entries of the plan, "KEY ESTIMATE" per line
plan_next() {
  "$PY" $here/gpu_plan.py next --budget "$1" --done "$BOOK_CACHE/done.txt" \
    --started "$BOOK_CACHE/started.txt" --failed "$BOOK_CACHE/failed.txt"
}

# run KEY ESTIMATE lines within this call's budget and deadline: the call's first entry
# always starts, a later one only while its estimate fits what is left of the budget
ran=0  # entries this call started
run_within_budget() {
  local key est used
  while read -r key est; do
    used=$((SECONDS - start))
    if [ $ran -gt 0 ] && { [ $used -gt "$budget" ] ||
        { [ "$est" != "?" ] && [ $((used + est)) -gt "$budget" ]; }; }; then
      echo "not started: $key (estimate ${est} s; $used s of the $budget s budget used)"
      continue
    fi
    ran=$((ran + 1))
    run_entry "$key" $((deadline - used > 1 ? deadline - used : 1)) || true
  done
}

# the lease's checkpoints, smallest first, while they fit $OUT's 16 MiB a file
pack_checkpoints() {
  local kept=() left=() size total=0 limit=$((15 * 1024 * 1024)) f
  while read -r size f; do
    [ -n "$f" ] || continue
    if (( total + size <= limit )); then kept+=("$f"); total=$((total + size))
    else left+=("$(basename "$f") ($((size / 1024 / 1024)) MiB)"); fi
  done < <(find "$BOOK_CACHE" -maxdepth 1 -name '*.pt' -printf '%s %p\n' 2>/dev/null | sort -n)
  [ ${#kept[@]} -gt 0 ] && tar cf "$OUT/checkpoints.tar.tmp" -C "$BOOK_CACHE" \
    $(for f in "${kept[@]}"; do basename "$f"; done) &&
    mv "$OUT/checkpoints.tar.tmp" "$OUT/checkpoints.tar"
  [ ${#left[@]} -gt 0 ] && echo "checkpoints too large to bring back: ${left[*]}"
  return 0
}

pack_out() {
  [ -f "$PACK/outputs.tar.gz" ] && cp "$PACK/outputs.tar.gz" "$OUT/"
  [ -f "$BOOK_TRAIN_LOG" ] && cp "$BOOK_TRAIN_LOG" "$OUT/" && tail -4 "$BOOK_TRAIN_LOG"
  echo "done (or --skip) in this lease: $(sort -u "$BOOK_CACHE/done.txt" | tr '\n' ' ')"
  [ -s "$BOOK_CACHE/failed.txt" ] && echo "failed: $(sort -u "$BOOK_CACHE/failed.txt" | tr '\n' ' ')"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null
  echo "this call: $((SECONDS - start)) s"
}

# the shipped set of $BOOK_SHIPPED into $OUT, in tar parts of at most 15 MiB
pack_weights() {
  rm -f "$OUT"/weights.tar.part-*
  (cd "$BOOK_SHIPPED" && tar cf - manifest.json $(ls *.safetensors 2>/dev/null)) |
    split -b 15M - "$OUT/weights.tar.part-"
  local n
  n=$(ls "$OUT"/weights.tar.part-* 2>/dev/null | wc -l)
  echo "shipped set: $(ls "$BOOK_SHIPPED"/*.safetensors 2>/dev/null | wc -l) files," \
    "$(du -sm "$BOOK_SHIPPED" | cut -f1) MB, in $n parts"
  [ "$n" -le 8 ] || echo "more than 8 parts: a call brings back 8 files; trim the set"
}

case $mode in
  weights)  # the shipped set, trained here (issue 92): worst pages first, N queues
    export BOOK_SHIPPED=${BOOK_SHIPPED:-$BOOK_CACHE/weights}
    if [ ! -f "$BOOK_SHIPPED/manifest.json" ]; then
      mkdir -p "$BOOK_SHIPPED" && cp -p companion/weights/* "$BOOK_SHIPPED"/ 2>/dev/null
    fi
    [ ${#entries[@]} -gt 0 ] || entries=(18 21 19 17 16 13 9 22 11 12 15 14 20 10 6 7 8 1)
    echo "=== weights ($(date -u +%H:%M:%S)): ${entries[*]} in $jobs queues"
    pids=()
    for ((q = 0; q < jobs; q++)); do
      mine=()
      for ((i = q; i < ${#entries[@]}; i += jobs)); do mine+=("${entries[$i]}"); done
      [ ${#mine[@]} -gt 0 ] || continue
      left=$((deadline - (SECONDS - start)))
      BOOK_RUN_DEADLINE=$(( $(date +%s) + left )) timeout --kill-after=15 $((left + 30)) \
        "$PY" $here/weights.py --missing "${mine[@]}" > "$OUT/weights-queue-$q.txt" 2>&1 &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || echo "a queue ended with exit $?"; done
    tail -n 3 "$OUT"/weights-queue-*.txt
    pack_weights
    "$PY" $here/weights.py --check | head -14
    echo "this call: $((SECONDS - start)) s" ;;
  lease)  # the benchmark, then the chapters the plan fits (issue 81)
    bench_s=${BENCH_S:-120}
    echo "=== bench ($(date -u +%H:%M:%S)): the DDPM step, at most $bench_s s"
    # never in the smoke run (a dry run's): it measures real steps
    env -u BOOK_SMOKE PYTHONUNBUFFERED=1 timeout --kill-after=10 "$bench_s" "$PY" \
      -m benchmarks.run --only ddpm --step --out "$OUT/bench.json" ||
      echo "bench: exit $? (cut at $bench_s s?)"
    todo=$("$PY" $here/gpu_plan.py lease --left $((budget - (SECONDS - start))))
    echo "the lease's chapters: $(echo "$todo" | cut -d' ' -f1 | tr '\n' ' ')"
    while read -r key est; do
      [ -n "$key" ] || continue
      used=$((SECONDS - start))
      if [ $used -ge "$budget" ]; then echo "not started: $key ($used s used)"; continue; fi
      run_entry "$key" $((deadline - used > 1 ? deadline - used : 1)) || true
      snapshot; pack_out; pack_checkpoints  # what finished comes back even if cut off
    done <<< "$todo"
    ;;
  list)
    if [ ${#entries[@]} = 0 ] && [ $dry = 0 ]; then
      echo "nothing to run: name entries, or --next, --detach, --dry-run (see --help)"; exit 2
    fi
    if [ $dry = 1 ]; then  # simulate the calls of the plan (or of the entries given)
      call=0
      if [ ${#entries[@]} -gt 0 ]; then
        for key in "${entries[@]}"; do run_entry "$key" || true; done
      else
        while todo=$(plan_next "$budget") && [ -n "$todo" ]; do
          call=$((call + 1))
          echo "--- simulated call $call: $(echo "$todo" | cut -d' ' -f1 | tr '\n' ' ')"
          start=$SECONDS ran=0
          run_within_budget <<< "$todo"
        done
      fi
      echo "dry run: done $(sort -u "$BOOK_CACHE/done.txt" | tr '\n' ' ')"
      [ -s "$BOOK_CACHE/failed.txt" ] && echo "dry run: FAILED $(sort -u "$BOOK_CACHE/failed.txt" | tr '\n' ' ')"
      echo "dry run: $((SECONDS)) s in all; log in $OUT/log.txt"
      [ ! -s "$BOOK_CACHE/failed.txt" ]
      exit $?
    fi
    printf '%s 0\n' "${entries[@]}" | run_within_budget
    pack_out ;;
  next)  # entries that end sooner than estimated leave room: ask the plan again
    while :; do
      before=$ran
      todo=$(plan_next $((budget - (SECONDS - start) > 1 ? budget - (SECONDS - start) : 1)))
      if [ -z "$todo" ]; then echo "the plan is done: nothing left to run"; break; fi
      run_within_budget <<< "$todo"
      [ $ran -gt $before ] || break
    done
    pack_out ;;
  runner)  # the whole plan, one entry after another, without a deadline
    echo $$ > "$BOOK_CACHE/runner.pid"
    echo "runner $$ started $(date -u +%H:%M:%S)"
    while todo=$(plan_next 1) && [ -n "$todo" ]; do
      run_entry "$(echo "$todo" | head -1 | cut -d' ' -f1)" || true
    done
    echo "runner: the plan is done ($(date -u +%H:%M:%S))"
    touch "$BOOK_CACHE/runner.done" ;;
  detach)
    pid=$(cat "$BOOK_CACHE/runner.pid" 2>/dev/null)
    if [ -f "$BOOK_CACHE/runner.done" ]; then
      echo "the plan is done"
    elif [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      echo "runner $pid still running: $(tail -1 "$BOOK_CACHE/started.txt")"
    else  # a session of its own: it outlives this call (it writes runner.pid itself)
      rm -f "$BOOK_CACHE/runner.pid"
      setsid nohup "$0" --runner > "$BOOK_CACHE/runner.log" 2>&1 < /dev/null &
      sleep 2
      echo "runner $(cat "$BOOK_CACHE/runner.pid" 2>/dev/null) started in its own session" \
        "(log: $BOOK_CACHE/runner.log)"
    fi
    while [ ! -f "$BOOK_CACHE/runner.done" ] && (( SECONDS - start < wait_s )); do
      kill -0 "$(cat "$BOOK_CACHE/runner.pid" 2>/dev/null)" 2>/dev/null ||
        { echo "the runner is gone (see runner-log.txt); the next call starts another"; break; }
      sleep 5
    done
    cp "$BOOK_CACHE/runner.log" "$OUT/runner-log.txt" 2>/dev/null
    [ -f "$BOOK_CACHE/runner.done" ] || echo "last started: $(tail -1 "$BOOK_CACHE/started.txt")"
    pack_out ;;
esac

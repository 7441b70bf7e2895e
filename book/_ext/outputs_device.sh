#!/usr/bin/env bash
# Re-executes chapters on a lent GPU machine (no network, no venv: its python3 has torch) and
# packs what it made into $OUT, one call per few chapters:
#
#   book/_ext/outputs_device.sh [--budget SECONDS] 06_vae_mnist 07_hierarchical_vae ...
#
# - Wheels carried in .whl/ (what the machine lacks: nbclient, ipykernel, mlxtend, myst-nb,
#   ...) are installed into /tmp/site first.
# - One checkpoint cache, .cache/book-gpu, is kept between the calls of one lease, so a
#   later call's chapter 10 loads what an earlier call's chapters 6, 7 and 9 trained.
# - Each notebook runs through execution_status.py (timed, stored in place, progress bars
#   off); a chapter is not started once --budget seconds have passed since the script
#   began, so the call ends inside the device's per-command limit.
# - $OUT/outputs.tar.gz holds the executed notebooks and the results files; unpack it in
#   the repository root here. $OUT/log.txt is the whole log.
set -uo pipefail
cd "$(dirname "$0")/../.."
budget=480
if [ "${1:-}" = "--budget" ]; then budget=$2; shift 2; fi
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
start=$SECONDS

if compgen -G ".whl/*.whl" >/dev/null; then
  if [ ! -f /tmp/site/.installed ]; then  # once per machine: the next calls find it there
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && touch /tmp/site/.installed || exit 1
  fi
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
export BOOK_PROFILE=${BOOK_PROFILE:-gpu} BOOK_OFFLINE=1 BOOK_PROGRESS=0
export BOOK_CACHE=${BOOK_CACHE:-$PWD/.cache/book-gpu}
mkdir -p "$BOOK_CACHE"
python3 -c "import torch, nbclient, ipykernel, mlxtend, myst_nb, companion
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')" || exit 1

done_=()
for name in "$@"; do
  nb=notebooks/${name%.ipynb}.ipynb
  if (( SECONDS - start > budget )); then
    echo "skipped $nb: $((SECONDS - start)) s used of the $budget s budget"
    continue
  fi
  if ! python3 book/_ext/execution_status.py execute "$nb"; then
    echo "FAILED: $nb"
    git diff --quiet -- "$nb" || done_+=("$nb")  # keep the failed run's outputs to read
    break
  fi
  done_+=("$nb")
  echo "$name" >> "$BOOK_CACHE/done.txt"  # what this lease has made (read by later calls)
  # packed after every chapter: a call stopped at the device's limit keeps what it made
  tar czf "$OUT/outputs.tar.gz" "${done_[@]}"
  [ -d "$BOOK_CACHE/results" ] && cp -r "$BOOK_CACHE/results" "$OUT/"
done

[ ${#done_[@]} -gt 0 ] && tar czf "$OUT/outputs.tar.gz" "${done_[@]}"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null
echo "done in $((SECONDS - start)) s: ${done_[*]:-nothing}"

# Sourced by the memory benchmarks. sample_peak_memory CMD...: runs CMD (stdout discarded, stderr
# to $SAMPLE_LOG) and prints "peak_rss_anon_mb,peak_rss_total_mb,seconds". RssAnon is memory the
# kernel cannot drop (the process's own allocations); pages of a memory-mapped store are file
# pages, counted in VmHWM (the total peak) but not in it. Sampled every 20 ms, so a spike shorter
# than that can be missed; VmHWM is the kernel's own high-water mark.
sample_peak_memory() {
  local start end pid peak_anon=0 peak_total=0 anon total
  start=$(date +%s.%N)
  "$@" >/dev/null 2>"${SAMPLE_LOG:-/dev/null}" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if [ -r "/proc/$pid/status" ]; then
      anon=$(awk '/^RssAnon/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      total=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      if [ -n "$anon" ] && [ "$anon" -gt "$peak_anon" ]; then peak_anon=$anon; fi
      if [ -n "$total" ] && [ "$total" -gt "$peak_total" ]; then peak_total=$total; fi
    fi
    sleep 0.02
  done
  if ! wait "$pid"; then
    [ -n "${SAMPLE_LOG:-}" ] && cat "$SAMPLE_LOG" >&2
    return 1
  fi
  end=$(date +%s.%N)
  awk -v a="$peak_anon" -v t="$peak_total" -v s="$start" -v e="$end" \
    'BEGIN { printf "%d,%d,%.1f\n", a / 1024, t / 1024, e - s }'
}

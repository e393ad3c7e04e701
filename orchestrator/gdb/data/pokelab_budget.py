"""The recorder's per-batch trap budget: pure accounting, stdlib only.

Imported into GDB's Python by ``pokelab_gdb.py`` (whose ``pokelab_traps`` drives it from its
breakpoints) and imported by the unit tests.  Nothing here touches GDB.

Every int3 window of the x86 text_poke machinery is opened by one call of the
batch function (``text_poke_bp_batch(tp, nr_entries)`` up to 6.15; 6.1 queues
at most ``TP_VEC_MAX`` = PAGE_SIZE / 16 = 256 sites per batch, so an unfiltered
function-tracer switch is ~140 batches).  The budget:

* at each batch: the batch may judge ``first`` traps, fewer if the rate
  budget (a token bucket of ``rate`` judged traps per second of host time,
  at most ``burst`` saved up) has less; with nothing left the batch is
  *skipped*: the probe does not stop the guest in it at all;
* at each judged trap: one unit of the batch's budget and one token; when the
  batch's budget is spent the batch is *cut*: the recorder disarms the
  handler's entry breakpoint, so later traps of that batch run unstopped;
  the return breakpoints stay armed until every vCPU that entered has
  returned (no record is lost: see ``pending``);
* the next batch re-arms everything;
* per burst (a run of *full* batches: ``text_poke_queue()`` flushes the
  vector when it is full, so only an update of more sites than the vector
  holds, e.g. an unfiltered ftrace switch, makes full batches; a batch that
  is not full is a single poke or a burst's last batch and ends the run):
  after ``batches_per_burst`` full batches in a row the probe goes *blind*: it
  disarms the batch hook too, so the rest of the burst runs with no stop at
  all, and re-arms at the burst's end (``text_poke_finish()``, or the next
  single ``text_poke_bp()``).  Each batch stop costs the
  guest as much as a trap's (QEMU < 10.2 flushes its translation cache at
  every stop), so this bounds the stops of any burst, however large.  The
  burst-end hooks are armed only while blind (they cost a stop each too), so
  ``bursts`` counts the blind bursts' ends, not every burst.

Traps let through are not stopped, so they cannot be counted: what is known
exactly is how many batches were cut or skipped, and how many traps were
judged.  ``rate=None`` turns the rate limit off; ``first=None`` turns the
budget off (every trap judged, the probe's behaviour before budgets).

The host chooses the figures (``orchestrator/core/budget.py``).
"""


class TrapBudget:
    """Per-batch budget of judged traps with a host-time rate limit.  Pure (time is passed in)."""

    def __init__(self, first, rate=None, burst=None, batches_per_burst=None):
        if first is not None and first < 1:
            raise ValueError("first must be >= 1 (or None: no budget)")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0 traps/s (or None: no rate limit)")
        if batches_per_burst is not None and batches_per_burst < 1:
            raise ValueError("batches_per_burst must be >= 1 (or None: every batch watched)")
        self.first = first
        self.rate = rate
        self.batches_per_burst = batches_per_burst
        self.in_burst = 0   # full batches in a row (the current burst's, so far)
        self.blind = False  # the batch hook is disarmed too, until the burst ends
        self.bursts = 0     # burst ends seen
        self.bursts_cut = 0  # bursts whose later batches ran unseen (not even counted)
        self.burst = max(int(burst if burst is not None else 4 * (first or 1)), first or 1)
        self.tokens = float(self.burst)
        self.t_last = None
        self.left = first  # traps this batch may still judge (None: unlimited)
        self.armed = True
        self.batches = 0
        self.cut = 0      # batches whose budget ran out (later traps, if any, ran unstopped)
        self.skipped = 0  # batches the rate budget left entirely unwatched
        self.judged = 0   # traps taken under the budget (recorded in full)
        self.sampled = 0  # of those, the ones in batches that were then cut (a sample of the batch)
        self.taken_this_batch = 0

    def _refill(self, now):
        if self.rate is None:
            return
        if self.t_last is not None and now > self.t_last:
            self.tokens = min(float(self.burst), self.tokens + (now - self.t_last) * self.rate)
        self.t_last = now

    def on_batch(self, now, full=True):
        """A new batch starts (host monotonic seconds ``now``; ``full``: as many sites as the
        vector holds): True if the probe watches it."""
        self.batches += 1
        self.in_burst = self.in_burst + 1 if full else 0
        self.taken_this_batch = 0
        if self.batches_per_burst is not None and self.in_burst > self.batches_per_burst:
            self.blind, self.armed, self.left = True, False, 0
            self.bursts_cut += 1
            return False
        if self.first is None:
            self.left, self.armed = None, True
            return True
        self._refill(now)
        allowed = self.first if self.rate is None else min(self.first, int(self.tokens))
        self.left = allowed
        self.armed = allowed > 0
        if not self.armed:
            self.skipped += 1
        return self.armed

    def on_trap(self, now):
        """A text_poke trap was taken and recorded: True if the entry must be disarmed now."""
        self.judged += 1
        self.taken_this_batch += 1
        if self.first is None:
            return False
        self._refill(now)
        if self.rate is not None:
            self.tokens = max(0.0, self.tokens - 1.0)
        self.left = (self.left or 0) - 1
        if self.left <= 0 and self.armed:  # the batch's budget is spent: cut it
            self.armed = False
            self.cut += 1
            self.sampled += self.taken_this_batch
            return True
        return False

    def on_burst_end(self, now):
        """A burst ended (or a single poke starts): re-arm everything.  True if it was blind."""
        was_blind = self.blind
        self.bursts += 1
        self.in_burst = 0
        self.blind = False
        self.armed = True
        self.left = self.first
        self.taken_this_batch = 0
        self._refill(now)
        return was_blind

    def stats(self):
        """The figures the host reports (``budget`` in the verdict JSON)."""
        return {"first": self.first, "rate": self.rate, "burst": self.burst,
                "batches_per_burst": self.batches_per_burst, "bursts": self.bursts,
                "bursts_cut": self.bursts_cut,
                "batches": self.batches, "batches_cut": self.cut, "batches_skipped": self.skipped,
                # the batch that makes a burst blind is seen (counted) but not watched
                "batches_whole": self.batches - self.cut - self.skipped - self.bursts_cut,
                "traps_taken": self.judged, "traps_sampled": self.sampled,
                "traps_in_whole_batches": self.judged - self.sampled, "armed": self.armed}

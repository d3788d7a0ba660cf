-- +goose Up
-- New pages of runs are filled to 40 % (migration 7: 65 %), so that a claim, which updates
-- runs created one after the other and so stored side by side, finds room on their page for
-- the new versions of all of them. An update that finds none is not HOT: it adds an entry
-- to every index of runs (which vacuum must later remove) and puts the version on another
-- page. A claim's new versions take the room of the rows they replace and a little more
-- (worker, claim and start times, the RUNNING event's seq), and stay beside them until it
-- commits, so a page must start less than half full. With 256 slots a claim takes ~50
-- runs: in a burn-down of 250,000 one update in three was not HOT (pg_stat_user_tables:
-- 334,896 HOT of 508,486). 2,000 runs created 500 at a time, claimed and finished 64 at a
-- time (TestClaimsAndFinishesUpdateRunsInPlace): runs moved to another page 911 at 65 %,
-- 467 at 50 %, 321 at 45 %, none at 40 %, and the table ended smaller at 40 % (heap 944 kB
-- against 1,072 kB, indexes 504 kB against 560 kB): the versions that did not fit took
-- pages of their own. Claims of 50 consecutive runs, 30,000 runs: the claim's update of
-- runs 17–19 µs per run at 65 %, 7–12 µs at 45 %.
ALTER TABLE runs SET (fillfactor = 40);

-- +goose Down
ALTER TABLE runs SET (fillfactor = 65);

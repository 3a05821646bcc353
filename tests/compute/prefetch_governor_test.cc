// PrefetchGovernor: it explores both modes, settles on the faster, keeps probing the other, and changes its mind
// when the times change.
#include "compute/prefetch_governor.h"

#include <gtest/gtest.h>

namespace es {
namespace {

// Runs `steps` decode steps whose time depends on the mode the governor picked; returns how many prefetched.
uint64_t RunSteps(PrefetchGovernor& g, int steps, double with_prefetch, double without) {
  uint64_t prefetched = 0;
  for (int i = 0; i < steps; ++i) {
    const bool p = g.PrefetchNext();
    prefetched += p;
    g.Observe(p, p ? with_prefetch : without);
  }
  return prefetched;
}

TEST(PrefetchGovernorTest, ExploresBothModesFirst) {
  PrefetchGovernor g;
  EXPECT_TRUE(g.PrefersPrefetch());  // nothing measured: the configured behaviour
  constexpr int kExplore = 2 * PrefetchGovernor::kExploreEpochs * PrefetchGovernor::kEpochSteps;
  EXPECT_EQ(RunSteps(g, kExplore, 1.0, 1.0), kExplore / 2u);
  EXPECT_EQ(g.mode(true).epochs, PrefetchGovernor::kExploreEpochs);
  EXPECT_EQ(g.mode(false).epochs, PrefetchGovernor::kExploreEpochs);
}

TEST(PrefetchGovernorTest, SettlesOnTheFasterModeAndProbesTheOther) {
  constexpr uint32_t kEpoch = PrefetchGovernor::kEpochSteps;
  PrefetchGovernor slow_prefetch;
  RunSteps(slow_prefetch, 16, 0.012, 0.010);  // explore
  // The first probe comes after kMinProbeInterval epochs of the preferred mode, later ones further apart.
  const uint64_t prefetched = RunSteps(slow_prefetch, 320, 0.012, 0.010);
  EXPECT_FALSE(slow_prefetch.PrefersPrefetch());
  EXPECT_GE(prefetched, kEpoch);
  EXPECT_LE(prefetched, 320u / PrefetchGovernor::kMinProbeInterval);
  EXPECT_NEAR(slow_prefetch.mode(true).seconds, 0.012, 1e-9);
  EXPECT_NEAR(slow_prefetch.mode(false).seconds, 0.010, 1e-9);
  // Over a long run the probes settle at one after every kMaxProbeInterval epochs.
  const uint64_t long_run = 64000;
  const uint64_t probes = RunSteps(slow_prefetch, long_run, 0.012, 0.010) / kEpoch;
  const uint64_t cycles = long_run / kEpoch / (PrefetchGovernor::kMaxProbeInterval + 1);
  EXPECT_GE(probes, cycles - 1);
  EXPECT_LE(probes, cycles + 1);

  PrefetchGovernor fast_prefetch;
  RunSteps(fast_prefetch, 16, 0.008, 0.010);
  EXPECT_GE(RunSteps(fast_prefetch, 320, 0.008, 0.010), 320u - 320u / PrefetchGovernor::kMinProbeInterval);
  EXPECT_TRUE(fast_prefetch.PrefersPrefetch());
}

TEST(PrefetchGovernorTest, ChangesItsMindWhenTheTimesChange) {
  PrefetchGovernor g;
  RunSteps(g, 200, 0.008, 0.010);
  ASSERT_TRUE(g.PrefersPrefetch());
  RunSteps(g, 800, 0.020, 0.010);  // prefetching became slow (say, the disk got busy): it runs, so it sees at once
  EXPECT_FALSE(g.PrefersPrefetch());
  // Fast again: only a probe can tell, at most kMaxProbeInterval epochs away.
  RunSteps(g, 4 * PrefetchGovernor::kEpochSteps * PrefetchGovernor::kMaxProbeInterval, 0.008, 0.010);
  EXPECT_TRUE(g.PrefersPrefetch());
}

// An odd step (one that waited on a long read) moves an epoch's median, not the mode's figure.
TEST(PrefetchGovernorTest, OneSlowStepDoesNotDecide) {
  PrefetchGovernor g;
  for (int i = 0; i < 64; ++i) {
    const bool p = g.PrefetchNext();
    g.Observe(p, p ? (i % 4 == 0 ? 0.1 : 0.008) : 0.010);
  }
  EXPECT_TRUE(g.PrefersPrefetch());
}

// A step that began in one mode and finished after the epoch changed counts for no epoch.
TEST(PrefetchGovernorTest, AStepOfTheOtherModeIsNotPartOfTheEpoch) {
  PrefetchGovernor g;
  for (uint32_t i = 0; i < PrefetchGovernor::kEpochSteps; ++i) g.Observe(false, 5.0);
  EXPECT_EQ(g.mode(false).epochs, 0u);
  EXPECT_EQ(g.mode(false).steps, PrefetchGovernor::kEpochSteps);
  EXPECT_TRUE(g.PrefetchNext());
}

}  // namespace
}  // namespace es

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
  PrefetchGovernor slow_prefetch;
  RunSteps(slow_prefetch, 16, 0.012, 0.010);  // explore
  const uint64_t prefetched = RunSteps(slow_prefetch, 320, 0.012, 0.010);
  EXPECT_FALSE(slow_prefetch.PrefersPrefetch());
  // One epoch in kProbeEvery still prefetches, to keep its time current.
  EXPECT_EQ(prefetched, 320u / PrefetchGovernor::kProbeEvery);
  EXPECT_NEAR(slow_prefetch.mode(true).seconds, 0.012, 1e-9);
  EXPECT_NEAR(slow_prefetch.mode(false).seconds, 0.010, 1e-9);

  PrefetchGovernor fast_prefetch;
  RunSteps(fast_prefetch, 16, 0.008, 0.010);
  EXPECT_EQ(RunSteps(fast_prefetch, 320, 0.008, 0.010), 320u - 320u / PrefetchGovernor::kProbeEvery);
  EXPECT_TRUE(fast_prefetch.PrefersPrefetch());
}

TEST(PrefetchGovernorTest, ChangesItsMindWhenTheTimesChange) {
  PrefetchGovernor g;
  RunSteps(g, 200, 0.008, 0.010);
  ASSERT_TRUE(g.PrefersPrefetch());
  RunSteps(g, 800, 0.020, 0.010);  // prefetching became slow (say, the disk got busy)
  EXPECT_FALSE(g.PrefersPrefetch());
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

// Nearest-rank percentiles on known samples, throughput, and per-repetition timings.
#include <gtest/gtest.h>

#include <vector>

#include "bench/measure/stats.h"

namespace es::bench {
namespace {

TEST(PercentileTest, PicksTheNearestRankOfTheSortedSamples) {
  const std::vector<double> v = {50, 10, 40, 20, 30};  // sorted: 10 20 30 40 50
  EXPECT_EQ(Percentile(v, 0), 10);
  EXPECT_EQ(Percentile(v, 0.25), 20);  // rank 1
  EXPECT_EQ(Percentile(v, kP50), 30);
  EXPECT_EQ(Percentile(v, 0.6), 30);   // rank 2.4: the nearest is 2
  EXPECT_EQ(Percentile(v, 0.65), 40);  // rank 2.6: the nearest is 3
  EXPECT_EQ(Percentile(v, 1), 50);
  EXPECT_EQ(Percentile(v, kP99), 50);  // rank 3.96
}

TEST(PercentileTest, EmptyIsZeroAndProbabilitiesAreClamped) {
  EXPECT_EQ(Percentile({}, kP50), 0);
  EXPECT_EQ(Median({}), 0);
  EXPECT_EQ(Percentile({3, 1, 2}, -1), 1);
  EXPECT_EQ(Percentile({3, 1, 2}, 2), 3);
  EXPECT_EQ(Percentile({7}, kP99), 7);
}

TEST(PercentileTest, MedianOfAnEvenCountIsTheUpperMiddleSample) {
  EXPECT_EQ(Median({4, 1, 3, 2}), 3);
  EXPECT_EQ(Median({1, 2}), 2);
  EXPECT_EQ(Median({5, 1, 3}), 3);
}

TEST(GigabytesPerSecondTest, DecimalUnitsAndZeroForNoTime) {
  EXPECT_DOUBLE_EQ(GigabytesPerSecond(1'000'000'000, 1000), 1.0);
  EXPECT_DOUBLE_EQ(GigabytesPerSecond(2'000'000, 1), 2.0);
  EXPECT_EQ(GigabytesPerSecond(1, 0), 0);
  EXPECT_EQ(GigabytesPerSecond(1, -1), 0);
}

TEST(TimingsTest, P50IsTheMedianOfRepetitionP50sAndP99SpansEverySample) {
  Timings t;
  EXPECT_EQ(t.p50(), 0);
  EXPECT_EQ(t.p99(), 0);
  for (double ms : {1.0, 2.0, 3.0}) t.Add(ms);  // p50 2
  t.EndRepetition();
  for (double ms : {4.0, 5.0, 6.0}) t.Add(ms);  // p50 5
  t.EndRepetition();
  for (double ms : {100.0, 200.0, 300.0, 400.0, 500.0}) t.Add(ms);  // one noisy repetition: p50 300
  t.EndRepetition();
  EXPECT_EQ(t.samples(), 11u);
  EXPECT_EQ(t.p50(), 5);    // the median of {2, 5, 300}; pooled, the eleven samples' median would be 6
  EXPECT_EQ(t.p99(), 500);  // over all eleven
}

TEST(TimingsTest, RepetitionsAreSeparate) {
  Timings t;
  for (double ms : {10.0, 10.0, 10.0, 10.0}) t.Add(ms);
  t.EndRepetition();
  t.Add(1);
  t.EndRepetition();
  t.Add(2);
  t.EndRepetition();
  // Pooled, the samples' median would be 10; per repetition it is the median of {10, 1, 2}.
  EXPECT_EQ(t.p50(), 2);
}

}  // namespace
}  // namespace es::bench

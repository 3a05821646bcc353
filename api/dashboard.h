// The dashboard `serve` answers at `/`: one self-contained HTML page (its script and style inline, nothing fetched
// from elsewhere) that draws the store's models from the API's own routes (/v1/models, the heatmap route) and
// polls /metrics. The page's source is api/dashboard.html, compiled into the binary at build time.
#pragma once

#include <string_view>

namespace es::api {

// The page's text (HTML).
std::string_view DashboardPage();

}  // namespace es::api

// Starts GraphiQL on the page GET /graphql serves (fraiseshm/http/graphiql.py).
// A file, not an inline script: the page's Content-Security-Policy allows
// scripts from the server only (script-src 'self').
(function () {
  "use strict";
  var root = document.getElementById("graphiql");
  var endpoint = root.getAttribute("data-endpoint") || "/graphql";
  var params = new URLSearchParams(window.location.search);
  var props = {
    fetcher: GraphiQL.createFetcher({ url: endpoint }),
  };
  if (params.get("query")) {
    props.query = params.get("query");
  }
  if (params.get("variables")) {
    props.variables = params.get("variables");
  }
  ReactDOM.createRoot(root).render(React.createElement(GraphiQL, props));
})();

// Prints a TCP port that is free on 127.0.0.1 right now: bind port 0, read the port, release it.
// Another process could take it before the caller binds it; the window is short, and a clash shows
// up as the server exiting at start-up, which run.sh's readiness polls report.
'use strict';
const srv = require('node:net').createServer();
srv.listen(0, '127.0.0.1', () => {
  const { port } = srv.address();
  srv.close(() => process.stdout.write(`${port}\n`));
});

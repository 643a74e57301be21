// Prints a TCP port that is free on 127.0.0.1 right now: bind port 0, read the port, release it.
// There is a short window before the caller binds it; run.sh retries start-up on a clash.
'use strict';
const srv = require('node:net').createServer();
srv.listen(0, '127.0.0.1', () => {
  const { port } = srv.address();
  srv.close(() => process.stdout.write(`${port}\n`));
});

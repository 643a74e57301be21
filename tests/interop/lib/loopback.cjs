// Preloaded (node --require) into third-party servers that listen on every interface and have
// no option to choose the host (server-everything calls app.listen(PORT)). The tests must only
// ever bind 127.0.0.1, so a listen() call that names a port but no host gets the loopback host.
'use strict';
const net = require('node:net');

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    // listen(port[, host][, backlog][, cb]): insert the host when the second argument is not one.
    if (typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1');
  } else if (first && typeof first === 'object' && first.path === undefined && first.host === undefined) {
    args[0] = { ...first, host: '127.0.0.1' };
  }
  return listen.apply(this, args);
};

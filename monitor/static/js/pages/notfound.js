// The 404 page: only the shared header (run, mode, connection).

import { startPage } from "../shell.js";

startPage({ wants: () => [], render: () => {} });

"""The token core: the state machine (held tokens, the implicit token, the
waiter queue) and the platform transports (pipe, fifo, Windows semaphore).

Private: nothing here imports a higher layer of fastjob."""

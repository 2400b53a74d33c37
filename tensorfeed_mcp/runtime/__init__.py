"""The runtimes, one per mode: what a process holds open while it serves (the store, account clients, background
senders) and how a request finds its account."""

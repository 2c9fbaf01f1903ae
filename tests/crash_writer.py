"""Child process for the SIGKILL test: writes records and blobs in a loop and prints each
acknowledged one (after write()/put returned, i.e. after fsync) until it is killed. Thread 0
also leases inference rows and holds them, as a worker killed mid-job would (LEASE lines).
READY is printed before any writer starts, so no ACK line can come before or inside it."""

import hashlib
import random
import sys
import threading

from fieldkit.kit import open_kit

data_dir, prefix = sys.argv[1], sys.argv[2]
kit = open_kit(data_dir)
store = kit.store
print_lock = threading.Lock()


def writer(thread: int) -> None:
    rng = random.Random(f"{prefix}-{thread}")
    i = 0
    while True:
        i += 1
        rid = f"{prefix}-{thread}-{i}"
        payload = rng.randbytes(rng.choice([10, 100, 5000, 300_000]))
        ref = store.blobs.put_bytes(payload)
        store.write(lambda db: db.table("crash").insert(
            {"id": rid, "blob": ref.addr, "sha": hashlib.sha256(payload).hexdigest()}))
        if i % 3 == 0:
            store.queue.enqueue("infer", {"rid": rid}, key=rid)
        leased = store.queue.lease("infer") if thread == 0 and i % 4 == 0 else None
        with print_lock:
            print(f"ACK {rid} {ref.addr} {hashlib.sha256(payload).hexdigest()}", flush=True)
            if leased is not None:
                print(f"LEASE {leased.id}", flush=True)


print("READY", flush=True)
threads = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()

"""The pure core: verdicts, errors, trap records, the judge, decoding, crash titles, bisect decisions.

Nothing here starts a process, opens a socket or reads the cache; every function
takes data and returns data, so every rule is unit-tested on captured records.
"""

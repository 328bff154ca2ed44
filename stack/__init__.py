"""The `mlex-tomo` command and the embedded stack it runs (`mlex-tomo up`).

It sits above every part: it starts them, so it imports them. The shared core
(`mlex_tomo`) imports none of the parts, and no part imports this package.
"""

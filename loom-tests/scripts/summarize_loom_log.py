import re,sys
lines=open(sys.argv[1]).read().split('\n')
seen=set()
for i,l in enumerate(lines):
    m=re.match(r"thread '([a-z_0-9]+)' .*panicked at",l)
    if m and m.group(1) not in seen:
        seen.add(m.group(1)); print("   FAILED", m.group(1)+":", lines[i+1][:160])
    m=re.match(r"test (\w+) \.\.\. ok",l)
    if m: print("   ok", m.group(1))
    m=re.match(r"\s+Running tests/(\w+)\.rs",l)
    if m: print("  [" + m.group(1) + "]")

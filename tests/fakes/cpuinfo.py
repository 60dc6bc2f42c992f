"""/proc/cpuinfo samples of machines we do not have: AMX Xeon, AMD EPYC, ARM (Graviton)."""

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu vme de pse tsc msr pae sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes \
xsave avx f16c rdrand hypervisor bmi1 avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl \
avx512_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8
bugs\t\t: spectre_v1 spectre_v2

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse sse2
"""

EPYC = """\
processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 avx512f avx512_vnni
"""

GRAVITON = """\
processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp sve svebf16 i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""

/* Test-only shim for running our Windows test binaries under Wine 8 (Debian 12), which lacks
 * bcryptprimitives.dll: Rust's std (1.78+) imports ProcessPrng from it for HashMap seeds and
 * the like. This implements ProcessPrng with RtlGenRandom (advapi32's SystemFunction036), which
 * Wine has. Never shipped: `make test-windows` builds it into target/wine-shim and puts that
 * folder on Wine's PATH. Real Windows 10+ has the system DLL. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}

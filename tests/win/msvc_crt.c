/*
 * msvc_crt.c - the bits of C runtime start-up an MSVC-ABI sem_test.exe needs
 * when it is linked by lld-link against MinGW-w64's msvcrt import library
 * instead of MSVC's CRT: an entry point that flushes stdout through exit(),
 * and atexit (which libmingwex wants) on top of msvcrt.dll's _onexit.
 */
#include <stdlib.h>

int main(void);

typedef int(__cdecl *fj_onexit_t)(void);
fj_onexit_t __cdecl _onexit(fj_onexit_t fn);

int __cdecl atexit(void(__cdecl *fn)(void)) {
    return _onexit((fj_onexit_t)(void *)fn) == NULL ? -1 : 0;
}

void fj_entry(void) { exit(main()); }

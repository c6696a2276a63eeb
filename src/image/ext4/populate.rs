//! A new ext4 filled from a tar archive's members, without extracting
//! anything: `mke2fs` makes the empty filesystem in a private scratch
//! file, and every member is created in it through libext2fs (over
//! imprint's I/O manager, straight to the file), as e2fsprogs 1.47.1's
//! `mke2fs -d TARBALL` does (misc/create_inode_libarchive.c) and as
//! `tar -xf` into the mounted filesystem would: directories, files (a
//! sparse member's holes, and whole zero blocks, stay holes, as
//! create_inode.c leaves them), symlinks, hard links (the link count of
//! the inode they name), character and block devices, fifos; each with
//! the member's permission bits (setuid/setgid/sticky too), numeric
//! owner, time and extended attributes (`security.capability` and the
//! rest, byte for byte).
//!
//! Memory stays flat in the archive's size: a member is streamed into its
//! inode, and a hard link finds the inode it names by looking the path up
//! in the filesystem built so far (no map of inode numbers is kept).
//!
//! Used by `provision --luks-encrypt` from a tarball (`image::luks::build`).

use std::ffi::{c_int, c_uint, c_void, CString};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use super::format::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use super::io_manager::{self, Device};
use super::libext2fs::{self, inode_kind, put16, put32, Ext2fsHandle, Ino};
use super::reader::Superblock;
use super::Ext4Error;
use crate::image::tar::members::{Data, Member, MemberKind, PutExtent};
use crate::image::{EntryType, ImageError};
use crate::io::read_at::ReadAt;
use crate::owner::Owner;
use crate::plan::{ImagePath, PlanEntry, PlanKind};

const S_IFCHR: u16 = 0x2000;
const S_IFBLK: u16 = 0x6000;
const S_IFIFO: u16 = 0x1000;
/// Directory entry file types (`EXT2_FT_*`).
const FT_REG_FILE: c_int = 1;
const FT_CHRDEV: c_int = 3;
const FT_BLKDEV: c_int = 4;
const FT_FIFO: c_int = 5;
const FT_SOCK: c_int = 6;
const FT_SYMLINK: c_int = 7;

/// The scratch file libext2fs works on, read and written in place.
struct FileDevice<'f>(&'f File);

impl Device for FileDevice<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}

impl ReadAt for FileDevice<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
}

/// Makes an empty ext4 of `size` bytes in `image` (an existing, empty,
/// private file) as flash.sh's `mkfs -t ext4` in the dm-crypt mapping
/// does (disk_encryption_helper.func line 577: the host's mke2fs.conf
/// defaults), its root directory owned by root (mke2fs gives it the
/// caller's ids otherwise, where its version is older than 1.43). With
/// `epoch` (SOURCE_DATE_EPOCH), mke2fs's times are that instant, not now.
pub(crate) fn make_filesystem(image: &Path, size: u64, epoch: Option<i64>) -> Result<(), String> {
    let mut mkfs = Command::new("mke2fs");
    mkfs.args(["-q", "-F", "-t", "ext4", "-E", "root_owner=0:0"])
        .arg(image)
        .arg(format!("{}k", size / 1024));
    if let Some(epoch) = epoch {
        mkfs.env("E2FSPROGS_FAKE_TIME", epoch.to_string());
    }
    let out = mkfs
        .output()
        .map_err(|e| format!("cannot run mke2fs ({e}); install e2fsprogs"))?;
    if !out.status.success() {
        return Err(format!(
            "mke2fs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Opens the filesystem in `image` and lets `fill` add members to it
/// through the [`Populator`]; the metadata is written (superblocks,
/// descriptors, bitmaps) only when every member went in.
pub(crate) fn populate(
    image: &File,
    fill: &mut dyn FnMut(&mut Populator) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let api = libext2fs::api()?;
    let mut device = FileDevice(image);
    let sb = Superblock::read(&device)?;
    let manager = &io_manager::MANAGER as *const io_manager::IoManager as *const c_void;
    let (result, io_error) = io_manager::with_device(&mut device, || {
        let fs = libext2fs::open_fs(
            api,
            c"imprint",
            manager,
            &sb,
            libext2fs::FLAG_RW | libext2fs::FLAG_64BITS,
        )?;
        let mut p = Populator { fs: &fs };
        fill(&mut p)?;
        fs.close()?;
        Ok::<(), ImageError>(())
    });
    match io_error {
        Some(e) => Err(Ext4Error::Device(e).into()),
        None => result,
    }
}

/// A file's data: calls its argument with each extent (offset, bytes).
type Source<'s> = dyn FnMut(&mut PutExtent) -> Result<(), ImageError> + 's;

/// Adds members to a filesystem being populated.
pub(crate) struct Populator<'h, 'a> {
    fs: &'h Ext2fsHandle<'a>,
}

fn unexpected(path: &str, why: impl Into<String>) -> ImageError {
    Ext4Error::Member {
        path: format!("/{path}"),
        why: why.into(),
    }
    .into()
}

impl Populator<'_, '_> {
    /// Creates `m` (with its data from `data`) at its path, replacing a
    /// non-directory there as `tar -x` does, and creating missing parent
    /// directories (0755 root:root, the member's time) as it does too.
    pub(crate) fn add(&mut self, m: &Member, data: &mut Data) -> Result<(), ImageError> {
        self.add_from(m, &mut |put| data.extents(put))
    }

    /// As [`Self::add`] for a file whose content is `bytes` (the member's
    /// size is taken from them).
    pub(crate) fn add_bytes(&mut self, m: &Member, bytes: &[u8]) -> Result<(), ImageError> {
        let mut m = m.clone();
        m.size = bytes.len() as u64;
        self.add_from(&m, &mut |put| put(0, bytes))
    }

    fn add_from(&mut self, m: &Member, data: &mut Source) -> Result<(), ImageError> {
        let fs = self.fs;
        let Some(path) = ImagePath::parse(&format!("/{}", m.path)) else {
            return Err(unexpected(&m.path, "its name is not one a filesystem holds (a component of more than 255 bytes, or `..`); rename it in the archive"));
        };
        if m.acl {
            return Err(unexpected(
                &m.path,
                "it carries POSIX ACLs (SCHILY.acl), which imprint does not carry into a new filesystem; make the archive without them (tar without --acls)",
            ));
        }
        let parent = self.parent_of(&path, m.mtime)?;
        let entry = PlanEntry {
            path: path.clone(),
            kind: PlanKind::Dir,
            mode: m.mode,
            owner: owner(m),
            xattrs: m.xattrs.clone(),
        };
        if let Some((ino, stored)) = fs.lookup_entry(parent, path.file_name())? {
            let raw = fs.read_inode(ino)?;
            let is_dir = inode_kind(&raw) == EntryType::Dir;
            if is_dir && m.kind == MemberKind::Dir {
                // A directory named again (or one made as a parent before
                // its own member): the member's attributes win.
                let mut raw = raw;
                libext2fs::set_attributes(
                    &mut raw,
                    S_IFDIR | m.mode as u16,
                    &entry,
                    m.mtime,
                    false,
                );
                fs.write_inode(ino, &raw)?;
                return Ok(fs.apply_xattrs(ino, &entry, &[], false)?);
            }
            if is_dir {
                return Err(unexpected(
                    &m.path,
                    format!(
                        "the archive makes it a directory first, then {}, which tar -x refuses too; remove one of the two members",
                        kind_word(&m.kind)
                    ),
                ));
            }
            let what = path.to_string();
            fs.remove(parent, &stored, ino, false, m.mtime, &what)?;
        }
        match &m.kind {
            MemberKind::Dir => fs.make_dir(parent, &entry, m.mtime)?,
            MemberKind::File => {
                let ino = fs.create_file(parent, &entry, m.mtime)?;
                self.write_data(ino, m, data)?;
                fs.apply_xattrs(ino, &entry, &[], false)?;
                // The file API set size and block count: the member's
                // attributes go last.
                let mut raw = fs.read_inode(ino)?;
                libext2fs::set_attributes(
                    &mut raw,
                    S_IFREG | m.mode as u16,
                    &entry,
                    m.mtime,
                    false,
                );
                fs.write_inode(ino, &raw)?;
            }
            MemberKind::Symlink(target) => {
                let ino = fs.make_symlink(parent, &entry, target, m.mtime)?;
                fs.apply_xattrs(ino, &entry, &[], false)?;
            }
            MemberKind::HardLink(target) => self.hard_link(parent, &path, target)?,
            MemberKind::CharDevice { major, minor } => {
                self.special(parent, &entry, S_IFCHR, (*major, *minor), m.mtime)?
            }
            MemberKind::BlockDevice { major, minor } => {
                self.special(parent, &entry, S_IFBLK, (*major, *minor), m.mtime)?
            }
            MemberKind::Fifo => self.special(parent, &entry, S_IFIFO, (0, 0), m.mtime)?,
        }
        Ok(())
    }

    /// The directory that holds `path`, made (with its missing parents) if
    /// the archive did not name it before.
    fn parent_of(&self, path: &ImagePath, mtime: i64) -> Result<Ino, ImageError> {
        let fs = self.fs;
        let components = path.components();
        let mut dir = super::format::ROOT_INO;
        for (i, name) in components[..components.len() - 1].iter().enumerate() {
            dir = match fs.lookup(dir, name)? {
                Some(ino) if inode_kind(&fs.read_inode(ino)?) == EntryType::Dir => ino,
                Some(_) => {
                    return Err(unexpected(
                        &components[..=i].join("/"),
                        format!("it is not a directory, and the archive puts {path} inside it; fix the archive"),
                    ))
                }
                None => {
                    let here = ImagePath::parse(&format!("/{}", components[..=i].join("/")))
                        .expect("components of a valid path");
                    let entry = PlanEntry {
                        path: here,
                        kind: PlanKind::Dir,
                        mode: 0o755,
                        owner: Owner::root(),
                        xattrs: Vec::new(),
                    };
                    fs.make_dir(dir, &entry, mtime)?;
                    fs.find_created(dir, &entry)?
                }
            };
        }
        Ok(dir)
    }

    /// Writes the member's data into the empty file `ino`: each extent at
    /// its offset, whole zero blocks left as holes, the size the member's.
    fn write_data(&self, ino: Ino, m: &Member, data: &mut Source) -> Result<(), ImageError> {
        let fs = self.fs;
        let what = format!("/{}", m.path);
        let mut file: *mut c_void = std::ptr::null_mut();
        // SAFETY: file is a valid out pointer.
        let code = unsafe { (fs.api.file_open)(fs.fs, ino, libext2fs::FILE_WRITE, &mut file) };
        fs.check(code, || format!("open {what}"))?;
        let block = fs.block_size as usize;
        let result = data(&mut |offset, bytes| {
            // Aligned whole blocks of zeros are skipped (holes); the
            // rest is written at its offset.
            let mut at = 0usize;
            while at < bytes.len() {
                let pos = offset + at as u64;
                let to_boundary = block - (pos % block as u64) as usize;
                let n = to_boundary.min(bytes.len() - at);
                let piece = &bytes[at..at + n];
                if !(n == block && piece.iter().all(|&b| b == 0)) {
                    write_at(fs, file, pos, piece, &what)?;
                }
                at += n;
            }
            Ok(())
        });
        let result = result.and_then(|()| {
            // SAFETY: file is open.
            let code = unsafe { (fs.api.file_set_size2)(file, m.size) };
            Ok(fs.check(code, || format!("set the size of {what}"))?)
        });
        // SAFETY: file is open and not used after this.
        let closed = unsafe { (fs.api.file_close)(file) };
        result?;
        Ok(fs.check(closed, || format!("finish writing {what}"))?)
    }

    /// Links `path` to the inode at `target` (a path of the archive,
    /// already created), counting the new link.
    fn hard_link(&self, parent: Ino, path: &ImagePath, target: &str) -> Result<(), ImageError> {
        let fs = self.fs;
        let comps: Vec<String> = target
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect();
        let found = if comps.is_empty() {
            None
        } else {
            fs.resolve(&comps)?
        };
        let Some(ino) = found else {
            return Err(unexpected(
                &path.relative(),
                format!("it is a hard link to /{target}, which the archive does not hold before it (or which flash.sh's copy leaves out, as it does every path with a component named boot); give the file its own data in the archive"),
            ));
        };
        let mut raw = fs.read_inode(ino)?;
        let mode = u16::from_le_bytes([raw[0], raw[1]]);
        let ft = match mode & S_IFMT {
            S_IFREG => FT_REG_FILE,
            S_IFLNK => FT_SYMLINK,
            S_IFCHR => FT_CHRDEV,
            S_IFBLK => FT_BLKDEV,
            S_IFIFO => FT_FIFO,
            S_IFDIR => {
                return Err(unexpected(
                    &path.relative(),
                    format!("it is a hard link to the directory /{target}, which no filesystem holds; fix the archive"),
                ))
            }
            _ => FT_SOCK,
        };
        let links = u16::from_le_bytes([raw[26], raw[27]]);
        if links == u16::MAX {
            return Err(unexpected(
                &path.relative(),
                "it would be the 65536th name of one file, more than ext4 counts; fix the archive",
            ));
        }
        let name = CString::new(path.file_name()).expect("ImagePath has no NUL");
        let what = path.to_string();
        // SAFETY: name is a valid C string for the duration of the call.
        fs.with_dir_space(parent, &what, || unsafe {
            (fs.api.link)(fs.fs, parent, name.as_ptr(), ino, ft)
        })?;
        put16(&mut raw, 26, links + 1);
        fs.write_inode(ino, &raw)?;
        Ok(())
    }

    /// Makes a device node or fifo: an inode with no blocks, the device
    /// number in `i_block` as the kernel and create_inode.c store it (the
    /// old 16-bit form when both numbers fit a byte, else the new form in
    /// the second word).
    fn special(
        &self,
        parent: Ino,
        entry: &PlanEntry,
        kind: u16,
        (major, minor): (u32, u32),
        mtime: i64,
    ) -> Result<(), ImageError> {
        let fs = self.fs;
        let what = entry.path.to_string();
        let mut ino: Ino = 0;
        // SAFETY: ino is a valid out pointer; a null bitmap means the fs's own.
        let code = unsafe {
            (fs.api.new_inode)(
                fs.fs,
                parent,
                c_int::from(kind) | entry.mode as c_int,
                std::ptr::null_mut(),
                &mut ino,
            )
        };
        fs.check(code, || format!("allocate an inode for {what}"))?;
        let ft = match kind {
            S_IFCHR => FT_CHRDEV,
            S_IFBLK => FT_BLKDEV,
            _ => FT_FIFO,
        };
        let name = CString::new(entry.path.file_name()).expect("ImagePath has no NUL");
        // SAFETY: name is a valid C string for the duration of the call.
        fs.with_dir_space(parent, &what, || unsafe {
            (fs.api.link)(fs.fs, parent, name.as_ptr(), ino, ft)
        })?;
        // SAFETY: ino was just allocated by ext2fs_new_inode.
        unsafe { (fs.api.inode_alloc_stats2)(fs.fs, ino, 1, 0) };
        let mut raw = vec![0u8; fs.inode_size];
        if fs.inode_size > 128 {
            let extra = (fs.inode_size - 128).min(32) as u16;
            raw[128..130].copy_from_slice(&extra.to_le_bytes());
        }
        put16(&mut raw, 26, 1);
        if kind != S_IFIFO {
            if major < 256 && minor < 256 {
                put32(&mut raw, 40, major * 256 + minor);
            } else {
                put32(
                    &mut raw,
                    44,
                    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
                );
            }
        }
        libext2fs::set_attributes(&mut raw, kind | entry.mode as u16, entry, mtime, true);
        fs.write_inode(ino, &raw)?;
        Ok(fs.apply_xattrs(ino, entry, &[], false)?)
    }
}

/// Writes `piece` at `pos` of the open file.
fn write_at(
    fs: &Ext2fsHandle,
    file: *mut c_void,
    pos: u64,
    piece: &[u8],
    what: &str,
) -> Result<(), ImageError> {
    let mut now: u64 = 0;
    // SAFETY: file is open; now is a valid out pointer (EXT2_SEEK_SET = 0).
    let code = unsafe { (fs.api.file_llseek)(file, pos, 0, &mut now) };
    fs.check(code, || format!("seek in {what}"))?;
    let mut done = 0usize;
    while done < piece.len() {
        let rest = &piece[done..];
        let mut written: c_uint = 0;
        // SAFETY: file is open; rest is valid for its length; written is
        // a valid out pointer.
        let code = unsafe {
            (fs.api.file_write)(
                file,
                rest.as_ptr().cast(),
                rest.len() as c_uint,
                &mut written,
            )
        };
        fs.check(code, || format!("write {what}"))?;
        if written == 0 {
            return Err(Ext4Error::NoFreeBlock {
                doing: format!("write {what}"),
            }
            .into());
        }
        done += written as usize;
    }
    Ok(())
}

fn owner(m: &Member) -> Owner {
    let mut o = Owner::root();
    o.uid = m.uid;
    o.gid = m.gid;
    o
}

fn kind_word(kind: &MemberKind) -> &'static str {
    match kind {
        MemberKind::Dir => "a directory",
        MemberKind::File => "a file",
        MemberKind::Symlink(_) => "a symlink",
        MemberKind::HardLink(_) => "a hard link",
        MemberKind::CharDevice { .. } => "a character device",
        MemberKind::BlockDevice { .. } => "a block device",
        MemberKind::Fifo => "a fifo",
    }
}
